//! The local store as a record writer meets it: puts land as files, create-only puts
//! never overwrite, and what is not there reads as absent.

use bytes::Bytes;
use object_store::path::Path;
use turngate_store::{Created, Store};

#[tokio::test]
async fn a_local_store_puts_creates_once_lists_and_deletes() {
    let dir = std::env::temp_dir().join(format!("turngate-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("file://{}", dir.join("records").display());
    let store = Store::open(&url).unwrap();
    let key = Path::from("sessions/s/turns/t/manifest.json");
    store.put(&key, Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("records/sessions/s/turns/t/manifest.json")).unwrap(),
        b"{}"
    );
    let index = Path::from("turns/t");
    let first = store
        .create(&index, Bytes::from_static(b"one"))
        .await
        .unwrap();
    let second = store
        .create(&index, Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!((first, second), (Created::Made, Created::Exists));
    assert_eq!(store.get(&index).await.unwrap().unwrap(), "one");
    assert_eq!(store.get(&Path::from("turns/none")).await.unwrap(), None);
    let listed = store.list(&Path::from("sessions/s")).await.unwrap();
    assert_eq!(listed.len(), 1);
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);
    // A plain path works as well; other schemes are refused.
    Store::open(dir.join("plain").to_str().unwrap()).unwrap();
    assert!(Store::open("gs://bucket").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
