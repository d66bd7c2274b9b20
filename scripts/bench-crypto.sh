#!/usr/bin/env bash
# Crypto throughput (issue 6): Criterion benchmarks of seal/open of 64 KiB blocks for both
# ciphers through our crypto API (benches/crypto.rs, release build, one core), printed next
# to `openssl speed -evp aes-256-gcm` and `-evp chacha20-poly1305` (64 KiB buffers, one
# core) on the same machine. Also reachable as `scripts/bench.sh --crypto`.
#
#   bash scripts/bench-crypto.sh [--quick]      (--quick: shorter measurement, noisier)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=5
crit=(--warm-up-time 2 --measurement-time 5)
if [[ "${1:-}" == "--quick" ]]; then
    secs=1
    crit=(--warm-up-time 1 --measurement-time 2)
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "building and running benches/crypto.rs (release)..." >&2
cargo bench --bench crypto -- --output-format bencher "${crit[@]}" | tee "$out" >&2

# bencher lines: "test aes256gcm/4MiB-chunk/seal ... bench:  528441 ns/iter (+/- 5)" (Criterion's
# bencher format has no throughput column): GB/s = bytes of the chunk / ns per iteration.
gbps() {
    awk -v n="$1" '$2 == n {
        split(n, p, "/"); b = p[2]; sub(/-chunk$/, "", b)
        bytes = (b ~ /MiB$/) ? b * 1048576 : b * 1024
        for (i = 1; i <= NF; i++) if ($i == "ns/iter") { gsub(/,/, "", $(i-1)); printf "%.2f", bytes / $(i-1) }
    }' "$out"
}
ossl() {
    # openssl prints 1000s of bytes per second for the 64 KiB column.
    openssl speed -evp "$1" -bytes 65536 -seconds "$secs" 2>/dev/null |
        awk 'END { v = $NF; sub(/k$/, "", v); printf "%.2f", v * 1000 / 1e9 }'
}
aes_ossl=$(ossl aes-256-gcm)
cha_ossl=$(ossl chacha20-poly1305)

printf '\n%s\n' "Crypto, one core, GB/s (10^9 bytes/s); CPU: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
printf '| %-38s | %8s | %8s |\n' "what" "seal" "open"
printf '|%s|%s|%s|\n' "----------------------------------------" "----------" "----------"
for c in aes256gcm xchacha20poly1305; do
    for s in 4MiB-chunk 64KiB-chunk; do
        printf '| %-38s | %8s | %8s |\n' "cryptbucket $c, $s (64 KiB blocks)" "$(gbps "$c/$s/seal")" "$(gbps "$c/$s/open")"
    done
done
printf '| %-38s | %19s |\n' "openssl speed -evp aes-256-gcm" "$aes_ossl (enc)"
printf '| %-38s | %19s |\n' "openssl speed -evp chacha20-poly1305" "$cha_ossl (enc)"
echo "(openssl uses ChaCha20-Poly1305 with a 96-bit nonce; ours is XChaCha20, which adds one HChaCha20 per block key.)"
