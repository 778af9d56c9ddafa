//! Unit tests of the pickle VM and of view materialisation.

use super::*;

fn run(bytes: &[u8]) -> Result<Value, String> {
    Vm::new(bytes).run()
}

#[test]
fn vm_reads_basic_values() {
    // {'a': (1, -2, 300, True, None, 1.5)} built by hand, protocol 2.
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'a', b'(', b'K', 1];
    p.extend([0x8a, 1, 0xfe, b'M', 0x2c, 1, 0x88, b'N', b'G']);
    p.extend(1.5f64.to_be_bytes());
    p.extend([b't', b's', b'.']);
    let Value::Dict(d) = run(&p).unwrap() else { panic!("not a dict") };
    let d = d.borrow();
    let Value::Tuple(t) = &d[0].1 else { panic!("not a tuple") };
    assert!(matches!(t[..], [Value::Int(1), Value::Int(-2), Value::Int(300), Value::Bool(true), Value::None, _]));
    assert!(matches!(t[5], Value::Float(f) if f == 1.5));
}

#[test]
fn vm_errors_name_the_opcode() {
    assert!(run(&[0x80, 2, b'X', 9, 0]).unwrap_err().contains("BINUNICODE"));
    assert!(run(&[0x80, 2, b'h', 3]).unwrap_err().contains("memo slot 3"));
    assert!(run(&[0x80, 2, b'u']).unwrap_err().contains("SETITEMS"));
    assert!(run(&[0x80, 2, 0xff]).unwrap_err().contains("0xff"));
    assert!(run(&[0x80, 2]).unwrap_err().contains("truncated"));
}

/// Random corruptions of a real `data.pkl` (bytes changed, inserted, cut) give errors, not panics.
#[test]
fn random_corruptions_never_panic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/core/model.bin");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).expect("core fixture")).unwrap();
    let pkl = read_entry(&mut zip, "model/data.pkl").unwrap();
    let storages: HashMap<String, Vec<u8>> =
        (0..64).filter_map(|i| Some((i.to_string(), read_entry(&mut zip, &format!("model/data/{i}")).ok()?))).collect();
    let read = |k: &str| storages.get(k).cloned().ok_or_else(|| format!("no storage {k}"));
    assert_eq!(state_dict_from(&path, &pkl, read).unwrap().len(), 19);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..20_000 {
        let mut p = pkl.clone();
        for _ in 0..1 + rand(4) {
            let i = rand(p.len());
            match rand(4) {
                0 => p[i] = rand(256) as u8,
                1 => p.insert(i, b"()}]tqhRbQsuae.\x85\x86\x87\x8a\x94\x95KMJX"[rand(25)]),
                2 => p[i] ^= 1 << rand(8),
                _ => p.truncate(i + 1),
            }
        }
        match state_dict_from(&path, &p, read) {
            Ok(_) => ok += 1,
            Err(Error::Pickle { .. } | Error::UnsupportedDtype { .. }) => failed += 1,
            Err(e) => panic!("unexpected error variant: {e}"),
        }
    }
    assert!(ok > 0 && failed > 0, "{ok} loaded, {failed} failed");
}

#[test]
fn strided_views_materialise_row_major() {
    let storage = Rc::new(StorageRef { key: "0".into(), dtype: "uint8".into() });
    let bytes: Vec<u8> = (0..12).collect();
    let view = |offset, size: Vec<usize>, stride: Vec<usize>| TensorRef {
        storage: storage.clone(),
        dtype: "uint8".into(),
        offset,
        size,
        stride,
    };
    // [3, 4] transposed to [4, 3].
    assert_eq!(
        materialise(&view(0, vec![4, 3], vec![1, 4]), &bytes, 1, usize::MAX).unwrap(),
        [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    );
    assert_eq!(
        materialise(&view(4, vec![2, 4], vec![4, 1]), &bytes, 1, usize::MAX).unwrap(),
        (4..12).collect::<Vec<u8>>()
    );
    assert_eq!(materialise(&view(2, vec![], vec![]), &bytes, 1, usize::MAX).unwrap(), [2]);
    assert!(materialise(&view(5, vec![2, 4], vec![4, 1]), &bytes, 1, usize::MAX)
        .unwrap_err()
        .contains("needs 13 bytes"));
    assert!(materialise(&view(0, vec![usize::MAX, 2], vec![1, 1]), &bytes, 1, usize::MAX).is_err());
    // A size-1 dim's stride is irrelevant, however large.
    assert_eq!(materialise(&view(1, vec![1, 3], vec![usize::MAX, 2]), &bytes, 1, usize::MAX).unwrap(), [1, 3, 5]);
    // A copy larger than the limit is refused before anything is allocated.
    let e = materialise(&view(0, vec![1 << 20, 1 << 20], vec![0, 0]), &bytes, 1, 1 << 24).unwrap_err();
    assert!(e.contains("would copy 1099511627776 bytes out of a 12-byte storage"), "{e}");
    // Stride 0 (an expanded view) repeats elements.
    assert_eq!(materialise(&view(3, vec![2, 2], vec![0, 1]), &bytes, 1, usize::MAX).unwrap(), [3, 4, 3, 4]);
}

#[test]
fn nested_checkpoints_are_refused_with_a_hint() {
    // {'state_dict': {}}
    let p = [
        0x80, 2, b'}', b'X', 10, 0, 0, 0, b's', b't', b'a', b't', b'e', b'_', b'd', b'i', b'c', b't', b'}', b's', b'.',
    ];
    let e = state_dict_from(Path::new("x.bin"), &p, |_| Err("none".into())).unwrap_err().to_string();
    assert!(e.contains("state_dict") && e.contains("training checkpoint"), "{e}");
}
