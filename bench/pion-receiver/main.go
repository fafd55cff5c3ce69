// The capacity baseline on another stack: a WHIP receiver on Pion (Debian's
// golang-github-pion-webrtc.v3-dev) that only reads each session's RTP and decodes it
// with libopus (a cgo call, the same library the gateway uses) at 16 kHz by default,
// the rate the gateway decodes at (-decode-rate 48000 for a receiver that plays). POST
// /v1/whip answers 201 with Location /v1/whip/{n}; DELETE /v1/whip/{n} ends it; GET
// /stats counts packets received and decoded.
//
// Build offline in GOPATH mode against Debian's unversioned Pion under
// /usr/share/gocode: see build_pion in scripts/lib/receivers.sh.
package main

/*
#cgo pkg-config: opus
#include <opus.h>
*/
import "C"

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v3"
)

var (
	packets, decoded uint64
	mu               sync.Mutex
	sessions         = map[string]*webrtc.PeerConnection{}
	next             uint64
	api              *webrtc.API
)

// decodeRate is libopus's output rate (Hz).
var decodeRate = 16000

func decode(track *webrtc.TrackRemote) {
	var err C.int
	dec := C.opus_decoder_create(C.opus_int32(decodeRate), 1, &err)
	defer C.opus_decoder_destroy(dec)
	pcm := make([]C.opus_int16, 5760)
	for {
		pkt, _, readErr := track.ReadRTP()
		if readErr != nil {
			return
		}
		atomic.AddUint64(&packets, 1)
		if len(pkt.Payload) == 0 {
			continue
		}
		n := C.opus_decode(dec, (*C.uchar)(unsafe.Pointer(&pkt.Payload[0])), C.opus_int32(len(pkt.Payload)), &pcm[0], 5760, 0)
		if n > 0 {
			atomic.AddUint64(&decoded, 1)
		}
	}
}

func whip(w http.ResponseWriter, r *http.Request) {
	offer, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	pc.OnTrack(func(track *webrtc.TrackRemote, _ *webrtc.RTPReceiver) { go decode(track) })
	id := fmt.Sprint(atomic.AddUint64(&next, 1))
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateFailed || s == webrtc.PeerConnectionStateClosed {
			mu.Lock()
			delete(sessions, id)
			mu.Unlock()
			pc.Close()
		}
	})
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: string(offer)}); err != nil {
		pc.Close()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		pc.Close()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(answer); err != nil {
		pc.Close()
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	<-gathered
	mu.Lock()
	sessions[id] = pc
	mu.Unlock()
	w.Header().Set("Content-Type", "application/sdp")
	w.Header().Set("Location", "/v1/whip/"+id)
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, pc.LocalDescription().SDP)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18082", "HTTP address")
	minPort := flag.Uint("port-min", 43000, "first media port")
	maxPort := flag.Uint("port-max", 43999, "last media port")
	flag.IntVar(&decodeRate, "decode-rate", decodeRate, "libopus output rate (Hz)")
	flag.Parse()

	m := &webrtc.MediaEngine{}
	opus := webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        111,
	}
	if err := m.RegisterCodec(opus, webrtc.RTPCodecTypeAudio); err != nil {
		log.Fatal(err)
	}
	registry := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, registry); err != nil {
		log.Fatal(err)
	}
	s := webrtc.SettingEngine{}
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	if err := s.SetEphemeralUDPPortRange(uint16(*minPort), uint16(*maxPort)); err != nil {
		log.Fatal(err)
	}
	api = webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(registry), webrtc.WithSettingEngine(s))

	http.HandleFunc("/v1/whip", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST an offer", http.StatusMethodNotAllowed)
			return
		}
		whip(w, r)
	})
	http.HandleFunc("/v1/whip/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/v1/whip/")
		mu.Lock()
		pc, ok := sessions[id]
		delete(sessions, id)
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		pc.Close()
		w.WriteHeader(http.StatusNoContent)
	})
	http.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := len(sessions)
		mu.Unlock()
		json.NewEncoder(w).Encode(map[string]uint64{"sessions": uint64(n), "packets": atomic.LoadUint64(&packets), "decoded": atomic.LoadUint64(&decoded)})
	})
	log.Printf("pion-receiver listening on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
