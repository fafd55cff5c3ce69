#!/usr/bin/env python3
"""WHIP test client for turngate, built on aiortc.

Publishes one WAV file as an Opus audio track to a turngate gateway over
WHIP-shaped signaling (non-trickle), optionally with the `turngate` data
channel, then DELETEs the session and prints ONE JSON line on stdout:

    {"session_id": ..., "location": ..., "events": [...], "packets_sent": N}

Everything stays on loopback: no ICE servers (so no STUN), host candidates
restricted to 127.0.0.1, non-loopback candidates in the gateway's answer are
dropped, and the gateway URL itself must be a loopback address.

Exit status 0 on success; non-zero with a message on stderr on any failure.

When the environment holds TURNGATE_TOKEN (a client JWT; an environment
variable, not an argument, so it stays out of process listings), the POST and
the DELETE carry it as `Authorization: Bearer <token>`.

Install: python3 -m venv .venv && .venv/bin/pip install -r tests/clients/requirements.txt
Usage:   .venv/bin/python tests/clients/aiortc_client.py \
             --base http://127.0.0.1:PORT --wav tests/data/speech-48k.wav
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from typing import Any, Optional

import aioice.ice

# --------------------------------------------------------------------------
# Loopback-only ICE.
#
# aioice (used by aiortc 1.x) gathers host candidates in
# Connection.gather_candidates() by calling the module-level function
# aioice.ice.get_host_addresses(use_ipv4, use_ipv6), which enumerates every
# interface via ifaddr and deliberately SKIPS 127.0.0.1 and ::1. Replacing the
# module attribute makes the only host candidate 127.0.0.1. Server-reflexive
# candidates need a STUN server, and aiortc only adds its default Google STUN
# server when RTCConfiguration.iceServers is None, so iceServers=[] (below)
# means no STUN/TURN traffic at all.
# --------------------------------------------------------------------------

LOOPBACK_V4 = "127.0.0.1"


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [LOOPBACK_V4] if use_ipv4 else []


if not callable(getattr(aioice.ice, "get_host_addresses", None)):
    sys.exit("aiortc_client: aioice.ice.get_host_addresses not found; "
             "this aioice version is not supported (see requirements.txt)")
aioice.ice.get_host_addresses = _loopback_host_addresses

from aiortc import (  # noqa: E402  (import after the patch on purpose)
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

log = logging.getLogger("aiortc_client")

CANDIDATE_RE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ (\S+)", re.I)
TURN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class ClientError(Exception):
    """A failure to report on stderr (exit status 1)."""


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sdp_candidates(sdp: str) -> list[tuple[str, str]]:
    """(address, type) of every a=candidate line."""
    out = []
    for line in sdp.splitlines():
        m = CANDIDATE_RE.match(line.strip())
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def loopback_only_answer(sdp: str) -> str:
    """Drop a=candidate lines whose address is not loopback (this also drops
    mDNS `.local` names, which would otherwise make aioice send multicast)."""
    kept: list[str] = []
    dropped: list[str] = []
    for line in sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n"):
        m = CANDIDATE_RE.match(line.strip())
        if m and not is_loopback_host(m.group(1)):
            dropped.append(line)
            continue
        kept.append(line)
    for line in dropped:
        print(f"aiortc_client: ignoring non-loopback answer candidate: {line}",
              file=sys.stderr)
    return "\r\n".join(kept)


class GatedTrack(MediaStreamTrack):
    """Forwards frames of `source` once `gate` is set. Until then recv()
    just waits, so no RTP is sent before the gate opens."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, gate: asyncio.Event) -> None:
        super().__init__()
        self._source = source
        self._gate = gate

    async def recv(self):
        await self._gate.wait()
        try:
            return await self._source.recv()
        except MediaStreamError:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        self._source.stop()


def http_request(method: str, url: str, body: Optional[bytes] = None,
                 headers: Optional[dict[str, str]] = None,
                 timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    headers = dict(headers or {})
    token = os.environ.get("TURNGATE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    # Never use an HTTP proxy from the environment: loopback only.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()
    except (urllib.error.URLError, OSError) as e:
        raise ClientError(f"{method} {url} failed: {e}") from e


def header(headers: dict[str, str], name: str) -> Optional[str]:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def wav_duration(path: str) -> Optional[float]:
    try:
        with wave.open(path) as w:
            return w.getnframes() / float(w.getframerate())
    except Exception:
        return None


async def wait_for(coro_or_event, timeout: float, what: str):
    try:
        if isinstance(coro_or_event, asyncio.Event):
            await asyncio.wait_for(coro_or_event.wait(), timeout)
        else:
            return await asyncio.wait_for(coro_or_event, timeout)
    except asyncio.TimeoutError:
        raise ClientError(f"timed out after {timeout:g} s waiting for {what}") from None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = args.base.rstrip("/")
    parsed = urllib.parse.urlparse(base)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClientError(f"--base must be an http(s) URL, got {args.base!r}")
    if not is_loopback_host(parsed.hostname):
        raise ClientError(f"--base must point at a loopback address, got {parsed.hostname!r}")

    use_dc = not args.no_datachannel
    events: list[Any] = []
    session_id: Optional[str] = None
    location: Optional[str] = None
    resource_url: Optional[str] = None

    loop = asyncio.get_running_loop()
    connected = asyncio.Event()
    failed = asyncio.Event()
    ready = asyncio.Event()        # session.ready received
    audio_gate = asyncio.Event()   # audio may start flowing
    audio_ended = asyncio.Event()
    turn_ended = asyncio.Event()

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player: Optional[MediaPlayer] = None
    try:
        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            log.info("connection state: %s", pc.connectionState)
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                failed.set()

        dc = None
        if use_dc:
            # Must exist before createOffer so the offer has an m=application section.
            dc = pc.createDataChannel("turngate", ordered=True)

            @dc.on("message")
            def _on_message(message: Any) -> None:
                nonlocal session_id
                if isinstance(message, bytes):
                    print(f"aiortc_client: ignoring binary data-channel message "
                          f"({len(message)} bytes)", file=sys.stderr)
                    return
                try:
                    ev = json.loads(message)
                except ValueError:
                    print(f"aiortc_client: non-JSON data-channel message: {message!r}",
                          file=sys.stderr)
                    events.append(message)
                    return
                events.append(ev)
                log.info("event: %s", message)
                etype = ev.get("type") if isinstance(ev, dict) else None
                if etype == "session.ready" and not ready.is_set():
                    session_id = ev.get("session_id")
                    if args.client_turn:
                        msg: dict[str, Any] = {"type": "turn.start"}
                        if args.turn_id:
                            msg["turn_id"] = args.turn_id
                        if args.traceparent:
                            msg["traceparent"] = args.traceparent
                        dc.send(json.dumps(msg))
                        log.info("sent %s", msg)
                    ready.set()
                elif etype == "turn.ended":
                    turn_ended.set()

        try:
            player = MediaPlayer(args.wav)
        except Exception as e:
            raise ClientError(f"cannot open {args.wav}: {e}") from e
        if player.audio is None:
            raise ClientError(f"{args.wav} has no audio stream")

        track = GatedTrack(player.audio, audio_gate)
        track.on("ended", lambda: loop.call_soon_threadsafe(audio_ended.set))
        transceiver = pc.addTransceiver(track, direction="sendonly")
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs
                if c.mimeType.lower() == "audio/opus"]
        transceiver.setCodecPreferences(opus)

        # Non-trickle: setLocalDescription() gathers all candidates first.
        await pc.setLocalDescription(await pc.createOffer())
        offer_sdp = pc.localDescription.sdp
        cands = sdp_candidates(offer_sdp)
        bad = [c for c in cands if not is_loopback_host(c[0])]
        if not cands or bad:
            raise ClientError(f"offer has non-loopback or no candidates: {cands}")
        log.info("offer candidates: %s", cands)

        status, headers, body = await asyncio.to_thread(
            http_request, "POST", f"{base}/v1/whip", offer_sdp.encode(),
            {"Content-Type": "application/sdp", "Accept": "application/sdp"},
            args.connect_timeout)
        if status != 201:
            raise ClientError(f"POST {base}/v1/whip: expected 201, got {status}: "
                              f"{body[:500].decode(errors='replace')}")
        location = header(headers, "Location")
        if not location:
            raise ClientError("201 response without a Location header")
        resource_url = location if re.match(r"^https?://", location) else base + location
        ctype = (header(headers, "Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            print(f"aiortc_client: warning: answer Content-Type is {ctype!r}", file=sys.stderr)

        answer_sdp = loopback_only_answer(body.decode())
        if not sdp_candidates(answer_sdp):
            raise ClientError("answer has no loopback candidates")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

        # Connect within the timeout (ICE + DTLS).
        t0 = time.monotonic()
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(connected.wait()), asyncio.ensure_future(failed.wait())],
            timeout=args.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
        for f in _:
            f.cancel()
        if not connected.is_set():
            state = pc.connectionState
            raise ClientError(f"peer connection not connected within "
                              f"{args.connect_timeout:g} s (state {state})")

        if use_dc:
            # Audio starts only once the gateway said session.ready (and, with
            # --client-turn, after turn.start was sent), so the whole file
            # lands inside the session and, if asked, inside the client turn.
            remaining = args.connect_timeout - (time.monotonic() - t0)
            await wait_for(ready, max(remaining, 1.0), "session.ready on the data channel")
        audio_gate.set()

        if use_dc and args.upload:
            # Upload an image mid-utterance: image.begin, binary chunks framed as
            # [L][upload_id][payload] of at most 16 KiB, image.end.
            await asyncio.sleep(args.upload_at)
            data = open(args.upload, "rb").read()
            upload_id = "aiortc-upload"
            prefix = bytes([len(upload_id)]) + upload_id.encode()
            dc.send(json.dumps({"type": "image.begin", "upload_id": upload_id,
                                "mime": args.upload_mime, "size": len(data),
                                "sha256": hashlib.sha256(data).hexdigest()}))
            for i in range(0, len(data), 16 * 1024 - len(prefix)):
                dc.send(prefix + data[i:i + 16 * 1024 - len(prefix)])
            dc.send(json.dumps({"type": "image.end", "upload_id": upload_id}))
            log.info("uploaded %s (%d bytes)", args.upload, len(data))

        dur = wav_duration(args.wav) or 60.0
        await wait_for(audio_ended, dur + 10.0, "the audio file to finish playing")
        log.info("audio finished")

        if use_dc and args.client_turn:
            if dc.readyState != "open":
                raise ClientError(f"data channel is {dc.readyState}, cannot send turn.end")
            dc.send(json.dumps({"type": "turn.end"}))
            log.info("sent turn.end")

        await asyncio.sleep(args.linger)

        packets_sent = 0
        stats = await transceiver.sender.getStats()
        for s in stats.values():
            if getattr(s, "type", None) == "outbound-rtp":
                packets_sent += s.packetsSent

        status, _h, body = await asyncio.to_thread(http_request, "DELETE", resource_url)
        resource_url = None
        if status not in (200, 204):
            raise ClientError(f"DELETE {base}{location}: expected 204, got {status}: "
                              f"{body[:500].decode(errors='replace')}")

        return {"session_id": session_id, "location": location,
                "events": events, "packets_sent": packets_sent}
    finally:
        if resource_url is not None:
            # Best effort clean-up after a failure.
            try:
                await asyncio.to_thread(http_request, "DELETE", resource_url, None, None, 3.0)
            except Exception:
                pass
        await pc.close()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True,
                   help="gateway base URL, e.g. http://127.0.0.1:8080 (loopback only)")
    p.add_argument("--wav", required=True, help="audio file to send (any format FFmpeg reads)")
    p.add_argument("--no-datachannel", action="store_true",
                   help="audio-only offer, no `turngate` data channel")
    p.add_argument("--client-turn", action="store_true",
                   help="send turn.start after session.ready and turn.end after the file ends")
    p.add_argument("--turn-id", help="turn_id (32 lowercase hex) for turn.start")
    p.add_argument("--upload", help="an image file to upload on the data channel")
    p.add_argument("--upload-mime", default="image/jpeg", help="its declared content type")
    p.add_argument("--upload-at", type=float, default=0.8,
                   help="seconds after the audio starts to begin the upload")
    p.add_argument("--traceparent", help="traceparent for turn.start")
    p.add_argument("--linger", type=float, default=2.0,
                   help="seconds to keep the connection after the file ended (default 2)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds allowed for signaling + ICE/DTLS connect (default 10)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log to stderr (-v: client, -vv: also aiortc/aioice debug)")
    args = p.parse_args(argv)

    if args.client_turn and args.no_datachannel:
        p.error("--client-turn needs the data channel")
    if args.turn_id is not None and not TURN_ID_RE.match(args.turn_id):
        p.error("--turn-id must be 32 lowercase hex digits")
    if args.turn_id and not args.client_turn:
        p.error("--turn-id only makes sense with --client-turn")

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose >= 2 else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose >= 1:
        log.setLevel(logging.INFO)

    dur = wav_duration(args.wav) or 60.0
    overall = args.connect_timeout * 2 + dur + args.linger + 30.0
    try:
        result = asyncio.run(asyncio.wait_for(run(args), overall))
    except ClientError as e:
        print(f"aiortc_client: error: {e}", file=sys.stderr)
        return 1
    except asyncio.TimeoutError:
        print(f"aiortc_client: error: overall timeout ({overall:g} s)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # anything unexpected is a failure too
        print(f"aiortc_client: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
