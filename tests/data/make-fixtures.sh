#!/usr/bin/env bash
# Regenerates the speech/audio fixtures in this directory.
#
# Requires: espeak-ng (Debian package espeak-ng, tested with 1.51) and sox
# (Debian package sox, tested with 14.4.2). Output is deterministic for a
# given espeak-ng/sox version: sox runs with -R (fixed random seed) and -D (no
# dither), and espeak-ng has no randomness.
#
# Usage: tests/data/make-fixtures.sh [OUTDIR]   (default: this script's dir)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here}"
mkdir -p "$out"

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null || { echo "make-fixtures: $tool not found" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

SOX=(sox -R -D -V1)
VOICE=en-us
SPEED=170   # words per minute

SENTENCE_1="Hello, how is the weather today?"
SENTENCE_2="Please turn on the kitchen lights."

# speak TEXT OUT.wav: TTS, trim espeak's own leading/trailing silence,
# resample to 48 kHz mono 16-bit, peak-normalise to -3 dBFS.
speak() {
    espeak-ng -v "$VOICE" -s "$SPEED" -w "$tmp/raw.wav" "$1"
    "${SOX[@]}" "$tmp/raw.wav" -r 48000 -c 1 -b 16 "$2" \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse \
        rate -v 48000 gain -n -3
}

# to16k IN OUT: mono 16-bit 16 kHz copy.
to16k() {
    "${SOX[@]}" "$1" -r 16000 -c 1 -b 16 "$2" rate -v 16000
}

speak "$SENTENCE_1" "$tmp/s1.wav"
speak "$SENTENCE_2" "$tmp/s2.wav"

# two-utterances: 0.5 s silence, sentence 1, 2.0 s silence, sentence 2, 1.5 s silence.
"${SOX[@]}" "$tmp/s1.wav" "$tmp/s1p.wav" pad 0.5 2.0
"${SOX[@]}" "$tmp/s2.wav" "$tmp/s2p.wav" pad 0 1.5
"${SOX[@]}" "$tmp/s1p.wav" "$tmp/s2p.wav" "$out/speech-48k.wav"
to16k "$out/speech-48k.wav" "$out/two-utterances.wav"

# speech: 0.5 s silence, sentence 1 (peak -3 dBFS), 1.5 s silence.
"${SOX[@]}" "$tmp/s1.wav" "$tmp/speech48.wav" pad 0.5 1.5
to16k "$tmp/speech48.wav" "$out/speech.wav"

# quiet-speech: same as speech, peak-normalised to -26 dBFS.
"${SOX[@]}" "$tmp/s1.wav" "$tmp/quiet48.wav" gain -n -26 pad 0.5 1.5
to16k "$tmp/quiet48.wav" "$out/quiet-speech.wav"

# tone: 0.5 s silence, 4 s 440 Hz sine at -3 dBFS (10 ms fades), 0.5 s silence.
"${SOX[@]}" -n -r 16000 -c 1 -b 16 "$out/tone.wav" \
    synth 4 sine 440 fade t 0.01 4 0.01 gain -n -3 pad 0.5 0.5

# noise: 0.5 s silence, 4 s pink noise peak-normalised to -6 dBFS, 0.5 s silence.
# (generated to a float file first: sox's `gain -n` straight after a noise
# `synth` in one chain misses the -6 dBFS target.)
"${SOX[@]}" -n -r 16000 -c 1 -e float -b 32 "$tmp/noise-raw.wav" \
    synth 4 pinknoise fade t 0.01 4 0.01
"${SOX[@]}" "$tmp/noise-raw.wav" -r 16000 -c 1 -e signed -b 16 "$out/noise.wav" \
    gain -n -6 pad 0.5 0.5

for f in two-utterances speech quiet-speech tone noise speech-48k; do
    printf '%-20s %6.3f s  %s\n' "$f.wav" "$(soxi -D "$out/$f.wav")" \
        "$(sha256sum "$out/$f.wav" | cut -c1-16)"
done
