//! Id map benchmark: memory per user and lookup speed of [`IdMap`] against
//! the anchor it replaced (a `DashMap<i64, Uuid>` with the same key hasher),
//! for a dense key space (a serial id with 2 % of the users deleted) and a
//! sparse one (random 63-bit keys), plus the real load of a users table from
//! a throwaway server under an exported-snapshot-style transaction.
//!
//! ```text
//! cargo bench --bench idmap                                  # 1M and 10M users
//! PGREKEY_BENCH_MAP_USERS=1000000 cargo bench --bench idmap  # one size
//! PGREKEY_BENCH_LOAD_USERS=10000000 cargo bench --bench idmap  # load 10M from the server (default 1M; 0 skips)
//! ```
//!
//! Lookup times are the best of three passes over 2 M random present keys,
//! in one thread; the ratio to the anchor is printed from the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use pg_rekey::embedded::Cluster;
use pg_rekey::idmap::{IdMap, KeyHasherBuilder};
use pg_rekey::pg::{connect, QualifiedName};
use pg_rekey::plan::model::{IntKind, ParentSpec};
use uuid::Uuid;

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .filter_map(|s| s.trim().replace('_', "").parse().ok())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// xorshift64*: deterministic keys without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn keys(users: u64, dense: bool) -> Vec<i64> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    if dense {
        // serial 1..=n·1.02 with 2 % deleted
        (1..=(users + users / 50) as i64)
            .filter(|_| rng.next() % 51 != 0)
            .take(users as usize)
            .collect()
    } else {
        (0..users).map(|_| (rng.next() >> 1) as i64).collect()
    }
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn best_of_3(mut f: impl FnMut() -> u64) -> (Duration, u64) {
    let mut best = Duration::MAX;
    let mut sink = 0;
    for _ in 0..3 {
        let t = Instant::now();
        sink ^= f();
        best = best.min(t.elapsed());
    }
    (best, sink)
}

fn in_memory(users: u64, dense: bool) {
    let ks = keys(users, dense);
    let mut rng = Rng(42);
    let probes: Vec<i64> = (0..2_000_000)
        .map(|_| ks[(rng.next() % ks.len() as u64) as usize])
        .collect();

    let t = Instant::now();
    let map = IdMap::default();
    for (i, &k) in ks.iter().enumerate() {
        map.upsert(k, Uuid::from_u128(i as u128 + 1));
    }
    let build = t.elapsed();
    let t = Instant::now();
    let anchor: DashMap<i64, Uuid, KeyHasherBuilder> =
        DashMap::with_hasher(KeyHasherBuilder::random());
    for (i, &k) in ks.iter().enumerate() {
        anchor.insert(k, Uuid::from_u128(i as u128 + 1));
    }
    let anchor_build = t.elapsed();
    // DashMap's own estimate, as the old IdMap::memory_bytes computed it.
    let anchor_bytes = anchor.capacity() * (std::mem::size_of::<(i64, Uuid)>() + 1);

    let (map_t, a) = best_of_3(|| {
        probes
            .iter()
            .map(|&k| map.get(black_box(k)).map_or(0, |u| u.as_u128() as u64))
            .sum()
    });
    let (anchor_t, b) = best_of_3(|| {
        probes
            .iter()
            .map(|&k| anchor.get(black_box(&k)).map_or(0, |u| u.as_u128() as u64))
            .sum()
    });
    assert_eq!(a, b, "both maps answer the same");
    let ns = |d: Duration| d.as_secs_f64() * 1e9 / probes.len() as f64;
    println!(
        "{users:>10} users {kind:6}: IdMap {:>6.1} B/user ({:>5.0} MiB), build {:>5.2}s, lookup {:>5.1} ns | DashMap {:>5.1} B/user, build {:>5.2}s, lookup {:>5.1} ns | ratio memory {:.2}, lookup {:.2}",
        map.bytes_per_user(),
        map.memory_bytes() as f64 / 1048576.0,
        build.as_secs_f64(),
        ns(map_t),
        anchor_bytes as f64 / users as f64,
        anchor_build.as_secs_f64(),
        ns(anchor_t),
        map.memory_bytes() as f64 / anchor_bytes as f64,
        ns(map_t) / ns(anchor_t),
        kind = if dense { "dense" } else { "sparse" },
    );
}

fn main() {
    println!(
        "load average {}; {} cores",
        loadavg(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let cpu0 = cpu_time();
    for users in env_list("PGREKEY_BENCH_MAP_USERS", &[1_000_000, 10_000_000]) {
        in_memory(users, true);
        in_memory(users, false);
    }
    println!(
        "in-memory part: {:.1} CPU-s; load average {}",
        (cpu_time() - cpu0).as_secs_f64(),
        loadavg()
    );

    let load = env_list("PGREKEY_BENCH_LOAD_USERS", &[1_000_000]);
    let load: Vec<u64> = load.into_iter().filter(|&n| n > 0).collect();
    if load.is_empty() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let admin = connect(&cluster.spec("postgres"), "bench admin").await.unwrap();
        for users in load {
            admin
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS users;
                     CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid NOT NULL);
                     INSERT INTO users SELECT g, gen_random_uuid() FROM generate_series(1, {users}) g WHERE g % 51 <> 0;
                     CREATE UNIQUE INDEX ON users (uuid_id);"
                ))
                .await
                .unwrap();
            admin.batch_execute("VACUUM ANALYZE users").await.unwrap();
            let parent = ParentSpec {
                table: QualifiedName::new("public", "users"),
                oid: 0,
                key_column: "id".into(),
                key_kind: IntKind::Int8,
                uuid_column: "uuid_id".into(),
            };
            admin.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await.unwrap();
            let cpu = cpu_time();
            let t = Instant::now();
            let map = IdMap::load(&admin, &parent).await.unwrap();
            let took = t.elapsed();
            let cpu = cpu_time() - cpu;
            admin.batch_execute("COMMIT").await.unwrap();
            println!(
                "load of {} users from the server: {:.2}s ({:.0} k users/s, tool {:.2} CPU-s), {:.1} B/user ({:.0} MiB); load average {}",
                map.len(),
                took.as_secs_f64(),
                map.len() as f64 / took.as_secs_f64() / 1000.0,
                cpu.as_secs_f64(),
                map.bytes_per_user(),
                map.memory_bytes() as f64 / 1048576.0,
                loadavg()
            );
        }
    });
}
