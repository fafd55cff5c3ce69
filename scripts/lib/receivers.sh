# Starting the receivers a capacity run compares, for scripts/bench-capacity,
# scripts/bench-ramp and scripts/bench-latency (sourced; called inside their
# loopback-only network namespace; the caller's environment reaches the receiver).
#
#   start_receiver NAME DIR STORE [CPUS]
#
# NAME: turngate (release gateway, records on, into STORE), turngate-norecord
# (record.enabled = false), bare (turngate-bare-receiver: the same webrtc-rs stack,
# reading and decoding RTP), pion (bench/pion-receiver). DIR: target/release or
# target/debug. CPUS: a taskset CPU list, or empty. Sets RECEIVER_PID, RECEIVER_PORT
# and RECEIVER_CHECK (turngate-load's flags: --no-check for a baseline, whose packet
# count comes from its /stats) and returns once it accepts connections.

start_receiver() {
  local name=$1 dir=$2 store=$3 cpus=${4:-}
  local pin=() config=()
  [ -n "$cpus" ] && pin=(taskset -c "$cpus")
  case $name in
    turngate | turngate-norecord)
      RECEIVER_PORT=18080 RECEIVER_CHECK=()
      if [ "$name" = turngate-norecord ]; then
        printf '[record]\nenabled = false\n' > "$store/norecord.toml"
        config=(--config "$store/norecord.toml")
      fi
      TURNGATE_STORE_URL=$store "${pin[@]}" "$dir/turngate" serve "${config[@]}" \
        --listen 127.0.0.1:$RECEIVER_PORT --media-ip 127.0.0.1 --media-ports 41000-41999 \
        --max-sessions 2000 --max-pending 2000 --max-pending-per-ip 2000 \
        --max-sessions-per-ip 2000 --sessions-per-minute-per-ip 1000000 \
        >>"$store/turngate.log" 2>&1 &
      ;;
    bare)
      RECEIVER_PORT=18081 RECEIVER_CHECK=(--no-check)
      "${pin[@]}" "$dir/turngate-bare-receiver" --listen 127.0.0.1:$RECEIVER_PORT \
        --media-ports 42000-42999 >>"$store/bare.log" 2>&1 &
      ;;
    pion)
      RECEIVER_PORT=18082 RECEIVER_CHECK=(--no-check)
      "${pin[@]}" "$dir/pion-receiver" --listen 127.0.0.1:$RECEIVER_PORT \
        --port-min 43000 --port-max 43999 >>"$store/pion.log" 2>&1 &
      ;;
    *) echo "unknown receiver: $name" >&2; return 1 ;;
  esac
  RECEIVER_PID=$!
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$RECEIVER_PORT") 2>/dev/null; then
      sleep 1
      return 0
    fi
    sleep 0.05
  done
  echo "$name does not listen on $RECEIVER_PORT; its log:" >&2
  tail -20 "$store/${name%-norecord}.log" >&2 || true
  kill "$RECEIVER_PID" 2>/dev/null || true
  return 1
}

# Builds bench/pion-receiver into DIR, offline, in GOPATH mode: Debian's Pion is
# unversioned under /usr/share/gocode (golang-github-pion-webrtc.v3-dev).
build_pion() {
  local dir=$1 gopath=$PWD/target/pion-gopath
  mkdir -p "$gopath/src"
  ln -sfn "$PWD/bench/pion-receiver" "$gopath/src/pionreceiver"
  GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$gopath/cache" \
    go build -o "$dir/pion-receiver" pionreceiver
}
