//! Config parsing: every option round-trips, errors name the key and the line, the command
//! line wins over the file, and docs/CONFIGURATION.md lists every option.

use super::*;

fn full(store: &str) -> VolumeConfig {
    VolumeConfig {
        store: store.into(),
        endpoint: Some("http://127.0.0.1:9000".into()),
        region: Some("eu-west-3".into()),
        profile: Some("backup".into()),
        cache_dir: Some("/var/cache/cb/photos".into()),
        mountpoint: Some("/mnt/photos".into()),
        keyfile: Some("/etc/cryptbucket/photos.key".into()),
        passphrase_file: None,
        passphrase_command: None,
        kms: false,
        kms_endpoint: Some("http://127.0.0.1:4566".into()),
        allow_other: true,
        idle_timeout: Some("15m".into()),
        notify: Some(true),
        commit_interval: Some(10),
        sync_on_close: true,
        cache_size: Some("10G".into()),
        staging_size: Some("512M".into()),
        spin_us: Some(20),
        io_timeout: Some(120),
        repack_interval: Some("1h".into()),
        read_ahead_kb: Some(4096),
        ca_bundle: Some("/etc/ssl/private-ca.pem".into()),
        sse: Some("aws:kms".into()),
        sse_kms_key_id: Some("alias/backup".into()),
        bucket_key: true,
        sse_c_key_file: None,
    }
}

fn parse(text: &str) -> Result<Config> {
    Config::parse(text, Path::new("/etc/cryptbucket/config.toml"))
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).expect_err("should be refused"))
}

#[test]
fn every_option_round_trips() {
    let mut cfg = Config::default();
    cfg.volumes
        .insert("photos".into(), full("s3://bucket/photos"));
    let mut other = full("/srv/vault");
    other.ca_bundle = None;
    other.sse = None;
    other.sse_kms_key_id = None;
    other.bucket_key = false;
    other.keyfile = None;
    other.passphrase_command = Some("pass show cryptbucket/vault".into());
    other.allow_other = false;
    cfg.volumes.insert("vault".into(), other);
    let mut third = VolumeConfig {
        store: "/srv/third".into(),
        ..Default::default()
    };
    third.passphrase_file = Some("/root/pass.txt".into());
    cfg.volumes.insert("third".into(), third);
    let fourth = VolumeConfig {
        store: "s3://b/fourth".into(),
        kms: true,
        ..Default::default()
    };
    cfg.volumes.insert("fourth".into(), fourth);
    let fifth = VolumeConfig {
        store: "s3://b/fifth".into(),
        sse_c_key_file: Some("/etc/cryptbucket/fifth.ssec".into()),
        ..Default::default()
    };
    cfg.volumes.insert("fifth".into(), fifth);

    let text = toml::to_string(&cfg).expect("serialize");
    let back = parse(&text).expect("parse what we wrote");
    assert_eq!(back, cfg, "round trip through:\n{text}");
    for key in all_keys() {
        assert!(
            text.contains(&format!("\n{key} = ")),
            "{key} missing from:\n{text}"
        );
    }
}

/// Every key a volume table can hold, from a value with every field set.
fn all_keys() -> Vec<String> {
    let mut v = full("x");
    v.passphrase_file = Some("/p".into());
    v.passphrase_command = Some("c".into());
    v.kms = true;
    v.sse_c_key_file = Some("/s".into());
    let t: toml::Table = toml::Table::try_from(&v).expect("to table");
    t.keys().cloned().collect()
}

#[test]
fn unknown_keys_name_the_key_and_the_line() {
    let e = err("[volumes.a]\nstore = \"/srv/a\"\n\nendpiont = \"http://x\"\n");
    assert!(e.contains("endpiont"), "{e}");
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("/etc/cryptbucket/config.toml"), "{e}");

    let e = err("# top\n[volume.a]\nstore = \"/srv/a\"\n");
    assert!(e.contains("volume") && e.contains("line 2"), "{e}");

    let e = err("[volumes.a]\nstore = \"/srv/a\"\nallow_other = \"yes\"\n");
    assert!(e.contains("line 3") && e.contains("allow_other"), "{e}");

    let e = err("[volumes.a]\nendpoint = \"http://x\"\n");
    assert!(e.contains("store"), "missing store must be named: {e}");
}

#[test]
fn two_key_sources_are_refused() {
    let e = err("[volumes.a]\nstore = \"/srv/a\"\nkeyfile = \"/k\"\npassphrase_file = \"/p\"\n");
    assert!(e.contains("more than one") && e.contains("`a`"), "{e}");
    assert!(e.contains("keyfile, passphrase_file"), "both named: {e}");
}

#[test]
fn semantic_errors_name_the_key_and_the_line() {
    let e = err("[volumes.a]\nstore = \"/srv/a\"\nkeyfile = \"/k\"\npassphrase_file = \"/p\"\n");
    assert!(
        e.contains("/etc/cryptbucket/config.toml: line 3, volume `a`, key `keyfile`"),
        "{e}"
    );

    // The right volume's key, not the same key of another volume; the line is shown with
    // the key underlined.
    let e = err(
        "[volumes.a]\nstore = \"/srv/a\"\nidle_timeout = \"5m\"\n\n[volumes.b]\n# comment\nstore = \"/srv/b\"\nidle_timeout = \"10 parsecs\"\n",
    );
    assert!(e.contains("line 8, volume `b`, key `idle_timeout`"), "{e}");
    assert!(e.contains("not a duration"), "{e}");
    assert!(
        e.contains("8 | idle_timeout = \"10 parsecs\"\n  | ^^^^^^^^^^^^"),
        "{e}"
    );

    let e = err("[volumes.a]\nstore = \"/srv/a\"\ncommit_interval = 0\n");
    assert!(
        e.contains("line 3, volume `a`, key `commit_interval`"),
        "{e}"
    );
    assert!(e.contains("1 to 3600"), "{e}");

    let e = err("[volumes.a]\n\nstore = \"\"\n");
    assert!(
        e.contains("line 3, volume `a`, key `store`: is empty"),
        "{e}"
    );

    // Inline tables and dotted keys are located too.
    let e = err("[volumes]\nc = { store = \"/srv/c\", commit_interval = 99999 }\n");
    assert!(
        e.contains("line 2, volume `c`, key `commit_interval`"),
        "{e}"
    );
    let e = err("volumes.d.store = \"/srv/d\"\nvolumes.d.io_timeout = 0\n");
    assert!(e.contains("line 2, volume `d`, key `io_timeout`"), "{e}");
}

#[test]
fn relative_and_home_paths() {
    let cfg = parse(
        "[volumes.a]\nstore = \"vaults/a\"\nkeyfile = \"a.key\"\ncache_dir = \"~/c\"\n\
         [volumes.b]\nstore = \"s3://b/p\"\n",
    )
    .expect("parse");
    let a = &cfg.volumes["a"];
    assert_eq!(a.store, "/etc/cryptbucket/vaults/a");
    assert_eq!(
        a.keyfile.as_deref(),
        Some(Path::new("/etc/cryptbucket/a.key"))
    );
    let home = dirs::home_dir().expect("home");
    assert_eq!(a.cache_dir.as_deref(), Some(home.join("c").as_path()));
    assert_eq!(cfg.volumes["b"].store, "s3://b/p");
}

fn cli_args() -> (StoreArgs, KeyArgs) {
    (
        StoreArgs {
            store: "photos".into(),
            endpoint: None,
            region: None,
            s3: Default::default(),
            io_timeout: None,
        },
        KeyArgs {
            passphrase_file: None,
            keyfile: None,
            passphrase_command: None,
            kms: false,
            kms_endpoint: None,
        },
    )
}

#[test]
fn the_file_fills_in_what_the_command_line_left_out() {
    let v = full("s3://bucket/photos");
    let (mut s, mut k) = cli_args();
    let applied = merge(&v, &mut s, &mut k, false);
    assert_eq!(s.store, "s3://bucket/photos");
    assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s.region.as_deref(), Some("eu-west-3"));
    assert_eq!(k.keyfile, v.keyfile);
    assert_eq!(applied.cache_dir, v.cache_dir);
    assert_eq!(applied.mountpoint, v.mountpoint);
    assert!(applied.allow_other);
    assert_eq!(applied.profile.as_deref(), Some("backup"));
    assert_eq!(applied.cache_size, Some(10 << 30));
    assert_eq!(applied.staging_size, Some(512 << 20));
    assert_eq!(applied.spin_us, Some(20));
    assert_eq!(
        applied.repack_interval,
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(applied.read_ahead_kb, Some(4096));
    assert_eq!(s.io_timeout, Some(120));
    assert_eq!(s.s3.ca_bundle, v.ca_bundle);
    assert_eq!(s.s3.sse.as_deref(), Some("aws:kms"));
    assert_eq!(s.s3.sse_kms_key_id.as_deref(), Some("alias/backup"));
    assert!(s.s3.bucket_key);
    assert_eq!(s.s3.sse_c_key_file, None);
}

#[test]
fn command_line_flags_win() {
    let v = full("s3://bucket/photos");
    let (mut s, mut k) = cli_args();
    s.endpoint = Some("http://other:9000".into());
    s.region = Some("us-east-1".into());
    k.passphrase_file = Some("/tmp/p".into());
    merge(&v, &mut s, &mut k, false);
    assert_eq!(s.endpoint.as_deref(), Some("http://other:9000"));
    assert_eq!(s.region.as_deref(), Some("us-east-1"));
    assert_eq!(k.passphrase_file.as_deref(), Some(Path::new("/tmp/p")));
    assert_eq!(
        k.keyfile, None,
        "the file's keyfile must not add a second key source"
    );

    // An SSE option on the command line replaces the file's SSE settings as a whole; the
    // other S3 options are filled in one by one.
    let (mut s, mut k) = cli_args();
    s.s3.sse_c_key_file = Some("/tmp/ssec".into());
    s.io_timeout = Some(5);
    s.s3.ca_bundle = Some("/tmp/ca.pem".into());
    merge(&v, &mut s, &mut k, false);
    assert_eq!(s.s3.sse, None);
    assert_eq!(s.s3.sse_kms_key_id, None);
    assert!(!s.s3.bucket_key);
    assert_eq!(s.io_timeout, Some(5));
    assert_eq!(s.s3.ca_bundle.as_deref(), Some(Path::new("/tmp/ca.pem")));

    // CRYPTBUCKET_PASSPHRASE also overrides the file's key source.
    let (mut s, mut k) = cli_args();
    merge(&v, &mut s, &mut k, true);
    assert_eq!(k.keyfile, None);
}

#[test]
fn names_versus_paths() {
    assert!(looks_like_name("photos"));
    assert!(!looks_like_name("./photos"));
    assert!(!looks_like_name("/srv/photos"));
    assert!(!looks_like_name("s3://b"));
    assert!(!looks_like_name("."));
}

#[test]
fn configuration_md_lists_every_option_once_with_a_default() {
    let doc = include_str!("../../../docs/CONFIGURATION.md");
    // The table of the configuration file's options (other tables reuse some names).
    let start = doc
        .find("Every option of a `[volumes.NAME]` table")
        .expect("table heading");
    let table = &doc[start..];
    let table = &table[..table.find("\n\n|").map_or(table.len(), |h| {
        table[h + 2..]
            .find("\n\n")
            .map_or(table.len(), |e| h + 2 + e)
    })];
    for key in all_keys() {
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with(&format!("| `{key}` |")))
            .collect();
        assert_eq!(
            rows.len(),
            1,
            "docs/CONFIGURATION.md must have one table row for `{key}`"
        );
        assert!(
            rows[0].split('|').filter(|c| !c.trim().is_empty()).count() >= 3,
            "row for `{key}` needs a default and a meaning: {}",
            rows[0]
        );
    }
}

#[test]
fn idle_timeout_and_notify_reach_mount() {
    let e = err("[volumes.a]\nstore = \"/srv/a\"\nidle_timeout = \"10 parsecs\"\n");
    assert!(
        e.contains("idle_timeout") && e.contains("not a duration"),
        "{e}"
    );
    let e = err("[volumes.a]\nstore = \"/srv/a\"\nrepack_interval = \"often\"\n");
    assert!(
        e.contains("line 3, volume `a`, key `repack_interval`") && e.contains("not a duration"),
        "{e}"
    );
    let e = err("[volumes.a]\nstore = \"/srv/a\"\nread_ahead_kb = 100000\n");
    assert!(
        e.contains("key `read_ahead_kb`") && e.contains("must be 0 to 16384 KiB"),
        "{e}"
    );
    let e = err("[volumes.a]\nstore = \"/srv/a\"\nnotify = \"yes\"\n");
    assert!(e.contains("line 3") && e.contains("notify"), "{e}");
    let cfg = parse("[volumes.a]\nstore = \"/srv/a\"\nidle_timeout = \"1h30m\"\nnotify = true\n")
        .expect("parse");
    let v = &cfg.volumes["a"];
    let mut store = StoreArgs {
        store: "a".into(),
        endpoint: None,
        region: None,
        s3: Default::default(),
        io_timeout: None,
    };
    let mut key = KeyArgs::default();
    let applied = merge(v, &mut store, &mut key, false);
    assert_eq!(
        applied.idle_timeout,
        Some(std::time::Duration::from_secs(5400))
    );
    assert_eq!(applied.notify, Some(true));
}

#[test]
fn sizes_timeouts_and_sse_are_checked() {
    for (text, words) in [
        ("cache_size = \"lots\"", &["cache_size", "not a size"][..]),
        ("staging_size = \"1X\"", &["staging_size", "not a size"]),
        ("io_timeout = 0", &["io_timeout", "at least 1"]),
        ("sse = \"rot13\"", &["sse", "unknown --sse mode"]),
        (
            "sse = \"AES256\"\nsse_c_key_file = \"/k\"",
            &["sse", "sse_c_key_file"],
        ),
        ("bucket_key = true", &["bucket_key", "aws:kms"]),
    ] {
        let e = err(&format!("[volumes.a]\nstore = \"s3://b/a\"\n{text}\n"));
        for w in words {
            assert!(e.contains(w), "{text}: {e}");
        }
    }
    let e = err("[volumes.a]\nstore = \"/srv/a\"\nsse = \"AES256\"\n");
    assert!(e.contains("sse") && e.contains("s3://"), "{e}");
    let cfg =
        parse("[volumes.a]\nstore = \"s3://b/a\"\ncache_size = \"64M\"\nca_bundle = \"ca.pem\"\n")
            .expect("parse");
    let a = &cfg.volumes["a"];
    assert_eq!(
        a.ca_bundle.as_deref(),
        Some(Path::new("/etc/cryptbucket/ca.pem"))
    );
}
