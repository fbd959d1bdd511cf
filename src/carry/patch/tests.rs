use super::*;

/// A tar of `files` as docker writes one (GNU headers, fixed mtimes).
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = ::tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Pseudo-random bytes (xorshift), so files do not compress to nothing.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Text-like: compressible, not trivial.
            b"abcdefghij klmnop\n"[(x % 18) as usize]
        })
        .collect()
}

fn files(n: usize, size: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("app/f{i:04}.txt"), noise(seed + i as u64, size)))
        .collect()
}

struct Case {
    dir: tempfile::TempDir,
    base: BaseTar,
    base_digest: Digest,
    base_len: u64,
    target_file: File,
    target_digest: Digest,
    target_len: u64,
}

fn gz(tar: &[u8], generation: Generation) -> Vec<u8> {
    let mut out = Vec::new();
    ferry_gozip::encode(tar, &mut out, generation, 6).unwrap();
    out
}

fn case(old: &[(String, Vec<u8>)], new: &[(String, Vec<u8>)], generation: Generation) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let base_gz = gz(&tar_of(old), generation);
    let target_gz = gz(&tar_of(new), generation);
    let base = BaseTar::spool(&base_gz[..], dir.path(), u64::MAX).unwrap();
    let path = dir.path().join("target");
    std::fs::write(&path, &target_gz).unwrap();
    Case {
        base,
        base_digest: Digest::sha256_of(&base_gz),
        base_len: base_gz.len() as u64,
        target_file: File::open(&path).unwrap(),
        target_digest: Digest::sha256_of(&target_gz),
        target_len: target_gz.len() as u64,
        dir,
    }
}

impl Case {
    fn make(&self, generation: Generation) -> Made {
        let t = Target {
            digest: &self.target_digest,
            blob: &self.target_file,
            generation,
            level: 6,
            mtime: 0,
        };
        make(
            &self.base_digest,
            self.base_len,
            &self.base,
            &t,
            self.dir.path(),
            19,
        )
        .unwrap()
    }
    fn apply(&self, patch: &File) -> Result<Vec<u8>, PatchError> {
        let mut out = Vec::new();
        apply(
            &self.base,
            patch,
            &self.base_digest,
            (&self.target_digest, self.target_len),
            &mut out,
        )?;
        Ok(out)
    }
    fn patch_bytes(&self, m: &mut Made) -> Vec<u8> {
        let mut v = Vec::new();
        m.file.seek(SeekFrom::Start(0)).unwrap();
        m.file.read_to_end(&mut v).unwrap();
        v
    }
    fn file_of(&self, bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile_in(self.dir.path()).unwrap();
        f.write_all(bytes).unwrap();
        f
    }
}

#[test]
fn one_changed_file_rebuilds_exactly_and_costs_little() {
    for generation in Generation::ALL {
        let old = files(200, 20_000, 1);
        let mut new = old.clone();
        new[57].1 = noise(999, 20_000);
        new[120].1.extend_from_slice(b"one more line\n");
        let c = case(&old, &new, generation);
        let m = c.make(generation);
        let out = c.apply(&m.file).unwrap();
        assert_eq!(Digest::sha256_of(&out), c.target_digest, "{generation}");
        // One file's worth of new noise, compressed, and a few bytes for the rest; the
        // layer is ~4 MB of tar.
        assert!(m.size < 20_000, "{generation}: patch of {} bytes", m.size);
        assert!(m.recipe.ops < 10, "{} ops", m.recipe.ops);
    }
}

#[test]
fn new_removed_and_renamed_members_and_new_mtimes() {
    let old = files(50, 3000, 2);
    let mut new: Vec<_> = old[5..].to_vec();
    new.push(("app/new.bin".into(), noise(77, 5000)));
    new[3].0 = "app/renamed.txt".into();
    let c = case(&old, &new, Generation::Classic);
    let m = c.make(Generation::Classic);
    assert_eq!(
        Digest::sha256_of(&c.apply(&m.file).unwrap()),
        c.target_digest
    );
    // Every header changed (another mtime): data frames against their old members.
    let mut b = ::tar::Builder::new(Vec::new());
    for (name, data) in &old {
        let mut h = ::tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_800_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let retimed = gz(&b.into_inner().unwrap(), Generation::Classic);
    let c2 = case(&old, &old, Generation::Classic);
    std::fs::write(c2.dir.path().join("target"), &retimed).unwrap();
    let c2 = Case {
        target_file: File::open(c2.dir.path().join("target")).unwrap(),
        target_digest: Digest::sha256_of(&retimed),
        target_len: retimed.len() as u64,
        ..c2
    };
    let m2 = c2.make(Generation::Classic);
    assert_eq!(
        Digest::sha256_of(&c2.apply(&m2.file).unwrap()),
        c2.target_digest
    );
    assert!(m2.size < 2000, "50 new mtimes cost {} bytes", m2.size);
}

#[test]
fn a_large_member_is_cut_into_units_and_an_insertion_is_found() {
    let big = noise(5, 3 * UNIT + 1234);
    let mut changed = big.clone();
    changed.splice(UNIT + 10..UNIT + 10, noise(6, 4000));
    let old = vec![("big.log".to_string(), big)];
    let new = vec![("big.log".to_string(), changed)];
    let c = case(&old, &new, Generation::Go127);
    let m = c.make(Generation::Go127);
    assert_eq!(
        Digest::sha256_of(&c.apply(&m.file).unwrap()),
        c.target_digest
    );
    assert!(m.size < 64 << 10, "{} bytes", m.size);
}

#[test]
fn hostile_patches_are_refused_naming_why() {
    let old = files(20, 5000, 3);
    let mut new = old.clone();
    new[4].1 = noise(4, 5000);
    let c = case(&old, &new, Generation::Classic);
    let mut m = c.make(Generation::Classic);
    let good = c.patch_bytes(&mut m);

    // Truncated.
    let e = c.apply(&c.file_of(&good[..good.len() - 10])).unwrap_err();
    assert!(matches!(e, PatchError::Format(_)), "{e}");
    // Not a patch.
    let e = c.apply(&c.file_of(b"hello")).unwrap_err();
    assert!(matches!(e, PatchError::Format(_)), "{e}");
    // A flipped byte in the data frames: the frame fails, or the output does.
    let mut bad = good.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x55;
    let e = c.apply(&c.file_of(&bad)).unwrap_err();
    assert!(
        matches!(e, PatchError::Format(_) | PatchError::Output(_)),
        "{e}"
    );
    // A recipe that names another target, or other sizes.
    let (r, body) = read_recipe(&m.file).unwrap();
    let with = |f: &dyn Fn(&mut Recipe)| {
        let mut r2 = r.clone();
        f(&mut r2);
        let json = serde_json::to_vec(&r2).unwrap();
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&(json.len() as u32).to_le_bytes());
        v.extend_from_slice(&json);
        v.extend_from_slice(&good[body as usize..]);
        c.file_of(&v)
    };
    let other = Digest::sha256_of(b"other");
    let e = c.apply(&with(&|r| r.target = other.clone())).unwrap_err();
    assert!(e.to_string().contains("not sha256:"), "{e}");
    let e = c.apply(&with(&|r| r.base = other.clone())).unwrap_err();
    assert!(matches!(e, PatchError::Base(_)), "{e}");
    // A recipe that claims a smaller tar than the ops write: stopped at the bound.
    let e = c.apply(&with(&|r| r.target_tar_size = 1000)).unwrap_err();
    assert!(e.to_string().contains("more than the recipe"), "{e}");
    // Another encoder level: the output differs.
    let e = c.apply(&with(&|r| r.level = 9)).unwrap_err();
    assert!(matches!(e, PatchError::Output(_)), "{e}");

    // The base decompressed behind the rebuild gives the same layer.
    let base_gz = gz(&tar_of(&old), Generation::Classic);
    let behind =
        BaseTar::spool_behind(std::io::Cursor::new(base_gz), c.dir.path(), u64::MAX).unwrap();
    let mut out = Vec::new();
    apply(
        &behind,
        &m.file,
        &c.base_digest,
        (&c.target_digest, c.target_len),
        &mut out,
    )
    .unwrap();
    assert_eq!(Digest::sha256_of(&out), c.target_digest);

    // A base that is not the one the patch was made from.
    let other_base = gz(&tar_of(&files(20, 5000, 9)), Generation::Classic);
    let wrong = BaseTar::spool(&other_base[..], c.dir.path(), u64::MAX).unwrap();
    let mut out = Vec::new();
    let e = apply(
        &wrong,
        &m.file,
        &c.base_digest,
        (&c.target_digest, c.target_len),
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(e, PatchError::Base(_)), "{e}");
    // … also when it is decompressed behind the rebuild: named as the wrong base, whatever
    // the rebuild ran into first.
    let wrong =
        BaseTar::spool_behind(std::io::Cursor::new(other_base), c.dir.path(), u64::MAX).unwrap();
    let e = apply(
        &wrong,
        &m.file,
        &c.base_digest,
        (&c.target_digest, c.target_len),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(matches!(e, PatchError::Base(_)), "{e}");
}

#[test]
fn a_patch_that_would_expand_without_bound_is_stopped_at_the_recipe() {
    // Ops that copy the same base range over and over, claiming a 100 GB tar: the output
    // bound (the target's size, from the manifest) stops it long before.
    let old = files(4, 100_000, 11);
    let c = case(&old, &old, Generation::Classic);
    let m = c.make(Generation::Classic);
    let (mut r, _) = read_recipe(&m.file).unwrap();
    let n = 1_000_000u64;
    let mut ops = Vec::new();
    {
        let mut z = zstd::stream::write::Encoder::new(&mut ops, 3).unwrap();
        for _ in 0..n {
            z.write_all(
                &Op::Copy {
                    off: 0,
                    len: 100_000,
                }
                .encode(),
            )
            .unwrap();
        }
        z.finish().unwrap();
    }
    r.ops = n;
    r.ops_bytes = ops.len() as u64;
    r.data_bytes = 0;
    r.target_tar_size = 100 << 30;
    let json = serde_json::to_vec(&r).unwrap();
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&(json.len() as u32).to_le_bytes());
    v.extend_from_slice(&json);
    v.extend_from_slice(&ops);
    let e = c.apply(&c.file_of(&v)).unwrap_err();
    assert!(
        matches!(e, PatchError::Output(ref s) if s.contains("longer than")),
        "{e}"
    );
}

#[test]
fn ops_round_trip() {
    for op in [
        Op::Copy {
            off: 7,
            len: u64::MAX,
        },
        Op::Data {
            prefix_off: 1,
            prefix_len: 2,
            out_len: 3,
            zlen: 4,
        },
    ] {
        assert_eq!(Op::decode(&op.encode()).unwrap(), op);
    }
    let mut b = Op::Copy { off: 0, len: 0 }.encode();
    b[0] = 9;
    assert!(Op::decode(&b).is_err());
}

/// `make_checked` proves its guess by the encode beside the diff, finds the writer when the guess
/// is wrong, and refuses a layer no Go writer made (or a remembered writer that does not fit).
#[test]
fn make_checked_proves_finds_or_refuses_the_encoder() {
    let old = files(60, 10_000, 4);
    let mut new = old.clone();
    new[7].1 = noise(77, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let base_gz = gz(&tar_of(&old), Generation::Classic);
    let base = BaseTar::spool(&base_gz[..], dir.path(), u64::MAX).unwrap();
    let base_digest = Digest::sha256_of(&base_gz);
    let new_tar = tar_of(&new);
    let attempt = |layer: &[u8], known| {
        let path = dir.path().join("target");
        std::fs::write(&path, layer).unwrap();
        let digest = Digest::sha256_of(layer);
        let f = File::open(&path).unwrap();
        let r = make_checked(
            &base_digest,
            base_gz.len() as u64,
            &base,
            &digest,
            &f,
            known,
            dir.path(),
            19,
        );
        r.map(|(mut m, enc)| {
            let mut out = Vec::new();
            apply(
                &base,
                &m.file,
                &base_digest,
                (&digest, layer.len() as u64),
                &mut out,
            )
            .unwrap();
            assert_eq!(out, layer, "the patch rebuilds the layer");
            m.file.seek(SeekFrom::Start(0)).unwrap();
            (m.recipe.encoder, enc.0, enc.1, enc.2)
        })
    };
    // The header's guess (classic, level 6) is right.
    let classic = gz(&new_tar, Generation::Classic);
    let got = attempt(&classic, None).unwrap();
    assert_eq!((got.1, got.2), (Generation::Classic, 6));
    // Go 1.27 at level 5 with an mtime: the header says "level 6", so the guess is wrong and
    // the writer is found.
    let mut go5 = Vec::new();
    ferry_gozip::encode_with_mtime(&new_tar[..], &mut go5, Generation::Go127, 5, 1_700_000_000)
        .unwrap();
    let got = attempt(&go5, None).unwrap();
    assert_eq!(
        (got.0.as_str(), got.1, got.2, got.3),
        ("go-1.27", Generation::Go127, 5, 1_700_000_000)
    );
    // Remembered wrongly: refused, not searched for.
    let err = attempt(&go5, Some((Generation::Classic, 6, 0))).unwrap_err();
    assert!(matches!(err, PatchError::Output(_)), "{err}");
    // Not Go's: flate2 (zlib) writes other bytes.
    let mut other = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    other.write_all(&new_tar).unwrap();
    let err = attempt(&other.finish().unwrap(), None).unwrap_err();
    assert!(
        matches!(&err, PatchError::Unpatchable(w) if w.starts_with("not made by Go")),
        "{err}"
    );
}
