# Shared helpers for bench/peers/*.sh (sourced, not run).
# State (configs, data, certs, logs, pid files) lives under $BENCH_DIR, never in /etc.
: "${BENCH_DIR:=/tmp/waxwing-bench}"
: "${ACCOUNTS:=10000}"          # bench0..bench{ACCOUNTS-1}
: "${BENCH_PASSWORD:=benchpass}"

need_pkg() { # need_pkg PKG... : install Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# make_cert DIR DOMAIN OWNER : self-signed cert+key for DOMAIN, readable by OWNER.
# BENCH_CERT_KEY=rsa (default: RSA-2048, what every recorded run used) or ec (ECDSA
# P-256, what certbot issues by default since 2.0); a cert of the other kind is replaced.
make_cert() {
  local dir=$1 domain=$2 owner=$3 key=${BENCH_CERT_KEY:-rsa} newkey is_ec=0
  case $key in
    rsa) newkey=(-newkey rsa:2048) ;;
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    *) echo "BENCH_CERT_KEY must be rsa or ec" >&2; return 2 ;;
  esac
  if [ -s "$dir/$domain.crt" ] &&
    openssl x509 -in "$dir/$domain.crt" -noout -text | grep -q id-ecPublicKey; then is_ec=1; fi
  if [ ! -s "$dir/$domain.crt" ] || { [ $key = ec ] && [ $is_ec = 0 ]; } ||
    { [ $key = rsa ] && [ $is_ec = 1 ]; }; then
    openssl req -x509 "${newkey[@]}" -nodes -days 30 -subj "/CN=$domain" \
      -addext "subjectAltName=DNS:$domain,DNS:*.$domain" \
      -keyout "$dir/$domain.key" -out "$dir/$domain.crt" 2>/dev/null
  fi
  chown "$owner" "$dir/$domain.key" "$dir/$domain.crt"
  chmod 600 "$dir/$domain.key"
}

# wait_port IP PORT SECS : wait until something listens there
wait_port() {
  local ip=$1 port=$2 secs=${3:-30} i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# The fd limit to give servers and the bench tool: 65536, or the hard limit if that is lower
# (this sandbox's hard limit is 20000 and root cannot raise it: no CAP_SYS_RESOURCE).
fd_limit() { local h; h=$(ulimit -Hn); if [ "$h" = unlimited ] || [ "$h" -gt 65536 ]; then echo 65536; else echo "$h"; fi; }

# Busy share of the machine (in cores) over one second, from /proc/stat;
# the side-by-side scripts wait for it to drop before each run.
busy_cores() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  local ta=0 tb=0 i
  for i in 1 2 3 4 5 6 7 8; do ta=$((ta + a[i])); tb=$((tb + b[i])); done
  local busy=$(( (tb - ta) - (b[4] - a[4]) - (b[5] - a[5]) ))
  awk -v b="$busy" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", b / t }'
}
