//! Seal/open throughput of our chunk crypto for both ciphers (issue 6): one core, 64 KiB
//! blocks, through `VolumeKeys::seal_chunk` / `open_chunk` — the same path the data layer
//! uses, including per-chunk key derivation and AAD. `scripts/bench.sh --crypto` runs these
//! next to `openssl speed`.
//!
//! Two shapes: a 4 MiB chunk of 64 blocks (what a big file write seals; the per-chunk HKDF
//! is amortised) and a chunk that is a single 64 KiB block (the per-chunk cost is visible).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cryptbucket::crypto::{ChunkId, Cipher, VolumeKeys, VolumeParams};

const BLOCK: u32 = 64 * 1024;

fn keys(cipher: Cipher, chunk_size: u32) -> VolumeKeys {
    let params = VolumeParams {
        cipher,
        chunk_size,
        block_size: BLOCK,
        padding: 0,
    };
    VolumeKeys::from_parts_for_tests([7u8; 32], [9u8; 16], params)
}

fn seal_open(c: &mut Criterion) {
    for (name, cipher) in [
        ("aes256gcm", Cipher::Aes256Gcm),
        ("xchacha20poly1305", Cipher::XChaCha20Poly1305),
    ] {
        for (shape, len) in [("64KiB-chunk", BLOCK), ("4MiB-chunk", 4 << 20)] {
            let k = keys(cipher, len.max(BLOCK));
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let id = ChunkId([1u8; 16]);
            let mut g = c.benchmark_group(format!("{name}/{shape}"));
            g.throughput(Throughput::Bytes(u64::from(len)));
            g.bench_function(BenchmarkId::from_parameter("seal"), |b| {
                b.iter(|| {
                    k.seal_chunk(&id, std::hint::black_box(&plain))
                        .expect("seal")
                })
            });
            let sealed = k.seal_chunk(&id, &plain).expect("seal");
            g.bench_function(BenchmarkId::from_parameter("open"), |b| {
                b.iter(|| {
                    k.open_chunk(
                        &id,
                        sealed.plain_len,
                        &sealed.digest,
                        std::hint::black_box(&sealed.bytes),
                    )
                    .expect("open")
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
