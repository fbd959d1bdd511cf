# Shared by the bench scripts (sourced, not run): a work directory removed on exit with every
# process listed in $pids, a free loopback port, and a CNCF Distribution configuration.
#
#   bench_init PREFIX                     sets $work, $pids and the EXIT trap
#   free_port                             prints a free port on 127.0.0.1
#   distribution_yml FILE ROOT PORT [EXTRA]   writes a Distribution 2.8 config (EXTRA: more YAML)

bench_init() {
  work="$(mktemp -d "${BENCH_DIR:-/tmp}/$1.XXXXXX")"
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

distribution_yml() {
  cat > "$1" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $2}, delete: {enabled: true}}
http:
  addr: 127.0.0.1:$3
${4:-}
YML
}
