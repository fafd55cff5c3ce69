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

/// A manifest of turn `turn`, number `number`.
fn manifest(turn: &str, number: u32) -> Bytes {
    let m = turngate_store::manifest::Manifest {
        turn_id: turn.into(),
        number,
        ..Default::default()
    };
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

#[tokio::test]
async fn a_sessions_turns_come_a_page_at_a_time_in_number_order() {
    use turngate_store::{layout, read};
    let dir = std::env::temp_dir().join(format!("turngate-pages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(dir.to_str().unwrap()).unwrap();
    let numbers = |page: &[turngate_store::manifest::Manifest]| -> Vec<u32> {
        page.iter().map(|m| m.number).collect()
    };
    // Recorded before number entries existed: every manifest is read, then paged.
    for (turn, number) in [("b", 2), ("a", 1), ("c", 3)] {
        let key = layout::artifact("old", turn, layout::name::MANIFEST);
        store.put(&key, manifest(turn, number)).await.unwrap();
    }
    let page = read::session_turns(&store, "old", 1, 1).await.unwrap();
    assert_eq!((numbers(&page.turns), page.more), (vec![2], true));

    // With entries: turns 1 to 12 but 5 (being recorded: an entry, no manifest yet).
    for number in 1..=12u32 {
        let turn = format!("t{number}");
        store
            .put(&layout::number("s", number, &turn), Bytes::new())
            .await
            .unwrap();
        if number != 5 {
            let key = layout::artifact("s", &turn, layout::name::MANIFEST);
            store.put(&key, manifest(&turn, number)).await.unwrap();
        }
    }
    let page = read::session_turns(&store, "s", 0, 5).await.unwrap();
    assert_eq!(
        (numbers(&page.turns), page.more),
        (vec![1, 2, 3, 4, 6], true)
    );
    let page = read::session_turns(&store, "s", 6, 5).await.unwrap();
    assert_eq!(
        (numbers(&page.turns), page.more),
        (vec![7, 8, 9, 10, 11], true)
    );
    let page = read::session_turns(&store, "s", 11, 5).await.unwrap();
    assert_eq!((numbers(&page.turns), page.more), (vec![12], false));
    // A turn whose entry was never written is listed all the same, in its place.
    let key = layout::artifact("s", "t13", layout::name::MANIFEST);
    store.put(&key, manifest("t13", 13)).await.unwrap();
    let page = read::session_turns(&store, "s", 11, 5).await.unwrap();
    assert_eq!((numbers(&page.turns), page.more), (vec![12, 13], false));
    // Nothing of a session: not recorded, whatever the page asked for.
    let page = read::session_turns(&store, "none", 5, 5).await.unwrap();
    assert!(!page.recorded && page.turns.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
