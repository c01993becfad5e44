//! Tests of the pickle reader on hand-written opcode sequences.

use super::*;

fn read(bytes: &[u8]) -> Result<Pickle, String> {
    read_pickle(bytes)
}

fn err(bytes: &[u8]) -> String {
    read(bytes).expect_err("expected an error")
}

/// `PROTO 2`, then `body`, then `STOP`.
fn pickle(body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![PROTO, 2];
    bytes.extend_from_slice(body);
    bytes.push(STOP);
    bytes
}

#[test]
fn scalars_strings_and_containers() {
    let mut body = vec![MARK, BININT1, 7, BININT2, 0x34, 0x12, BININT];
    body.extend_from_slice(&(-5i32).to_le_bytes());
    body.extend_from_slice(&[LONG1, 2, 0xff, 0x7f, LONG1, 1, 0xfe, LONG1, 0]);
    body.push(BINFLOAT);
    body.extend_from_slice(&1.5f64.to_be_bytes());
    body.extend_from_slice(&[NONE, NEWTRUE, NEWFALSE, SHORT_BINUNICODE, 2, b'h', b'i']);
    body.extend_from_slice(&[BINUNICODE, 1, 0, 0, 0, b'x', BINUNICODE8]);
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(b"y");
    body.push(TUPLE);
    let p = read(&pickle(&body)).unwrap();
    let Value::Tuple(items) = p.get(p.root()) else {
        panic!("root {:?}", p.get(p.root()));
    };
    let values: Vec<&Value> = items.iter().map(|&id| p.get(id)).collect();
    assert_eq!(
        values,
        [
            &Value::Int(7),
            &Value::Int(0x1234),
            &Value::Int(-5),
            &Value::Int(0x7fff),
            &Value::Int(-2),
            &Value::Int(0),
            &Value::Float(1.5),
            &Value::None,
            &Value::Bool(true),
            &Value::Bool(false),
            &Value::Str("hi".into()),
            &Value::Str("x".into()),
            &Value::Str("y".into()),
        ]
    );
}

#[test]
fn protocol_4_framing_memoize_stack_global_and_lists() {
    let mut body = vec![FRAME];
    body.extend_from_slice(&100u64.to_le_bytes());
    body.extend_from_slice(&[SHORT_BINUNICODE, 11]);
    body.extend_from_slice(b"collections");
    body.extend_from_slice(&[MEMOIZE, SHORT_BINUNICODE, 11]);
    body.extend_from_slice(b"OrderedDict");
    body.extend_from_slice(&[MEMOIZE, STACK_GLOBAL, EMPTY_TUPLE, REDUCE, MEMOIZE]);
    // {'l': [1, 2, 3]} set into the OrderedDict, the list filled by APPEND and APPENDS.
    body.extend_from_slice(&[SHORT_BINUNICODE, 1, b'l', EMPTY_LIST, BININT1, 1, APPEND]);
    body.extend_from_slice(&[MARK, BININT1, 2, BININT1, 3, APPENDS, SETITEM]);
    let p = read(&pickle(&body)).unwrap();
    let Value::Dict(entries) = p.get(p.root()) else {
        panic!("root {:?}", p.get(p.root()));
    };
    let [(key, list)] = entries.as_slice() else {
        panic!("{entries:?}");
    };
    assert_eq!(p.get(*key), &Value::Str("l".into()));
    let Value::List(items) = p.get(*list) else {
        panic!("{:?}", p.get(*list));
    };
    let ints: Vec<&Value> = items.iter().map(|&id| p.get(id)).collect();
    assert_eq!(ints, [&Value::Int(1), &Value::Int(2), &Value::Int(3)]);
}

#[test]
fn memo_get_shares_the_value_instead_of_copying_it() {
    // l = [None]; t = (l, l); the tuple's two items are one value.
    let body = [EMPTY_LIST, BINPUT, 0, NONE, APPEND, BINGET, 0, TUPLE2];
    let p = read(&pickle(&body)).unwrap();
    let Value::Tuple(items) = p.get(p.root()) else {
        panic!("root");
    };
    assert_eq!(items[0], items[1]);
    assert_eq!(p.values.len(), 3, "list, None, tuple");
}

#[test]
fn unknown_globals_are_refused_by_name() {
    let msg = err(&pickle(b"cos\nsystem\n"));
    assert!(
        msg.contains("'os.system'") && msg.contains("refused"),
        "{msg}"
    );
    let mut body = vec![SHORT_BINUNICODE, 8];
    body.extend_from_slice(b"builtins");
    body.extend_from_slice(&[SHORT_BINUNICODE, 4]);
    body.extend_from_slice(b"eval");
    body.push(STACK_GLOBAL);
    let msg = err(&pickle(&body));
    assert!(msg.contains("'builtins.eval'"), "{msg}");
    // A storage class is a name torch passes, never calls.
    let msg = err(&pickle(b"ctorch\nFloatStorage\n)R"));
    assert!(msg.contains("constructs a torch class"), "{msg}");
}

#[test]
fn nesting_is_limited() {
    let mut body = vec![NONE];
    body.extend(std::iter::repeat_n(TUPLE1, usize::from(MAX_DEPTH) - 1));
    assert!(
        read(&pickle(&body)).is_ok(),
        "{MAX_DEPTH} levels are allowed"
    );
    body.push(TUPLE1);
    let msg = err(&pickle(&body));
    assert!(msg.contains("nesting limit") && msg.contains("64"), "{msg}");

    let marks = vec![MARK; usize::from(MAX_DEPTH) + 1];
    let msg = err(&pickle(&marks));
    assert!(msg.contains("nesting limit"), "{msg}");

    // A dict holding a value of the deepest allowed nesting is one level too deep.
    let mut body = vec![EMPTY_DICT, NONE, NONE];
    body.extend(std::iter::repeat_n(TUPLE1, usize::from(MAX_DEPTH) - 1));
    body.push(SETITEM);
    let msg = err(&pickle(&body));
    assert!(msg.contains("nesting limit"), "{msg}");
}

#[test]
fn object_count_is_limited() {
    let body = vec![NONE; MAX_VALUES + 1];
    let msg = err(&pickle(&body));
    assert!(msg.contains("object count limit"), "{msg}");
}

#[test]
fn long_strings_wide_integers_and_unknown_opcodes_are_errors() {
    let mut body = vec![BINUNICODE];
    body.extend_from_slice(&(MAX_STRING_BYTES as u32 + 1).to_le_bytes());
    let msg = err(&pickle(&body));
    assert!(msg.contains("string limit"), "{msg}");
    let msg = err(&pickle(&[LONG1, 9]));
    assert!(msg.contains("wider than 64 bits"), "{msg}");
    let msg = err(&pickle(b"S'x'\n"));
    assert!(msg.contains("opcode 0x53"), "{msg}");
    let msg = err(&[PROTO, 2, NONE]);
    assert!(msg.contains("without a STOP"), "{msg}");
    let msg = err(&pickle(&[BINGET, 3]));
    assert!(msg.contains("memo entry 3"), "{msg}");
}

/// `PROTO 2`, `NONE`, then `BINPUT 0` forever: each opcode is valid and creates nothing.
struct EndlessMemoPuts {
    pos: u64,
}

impl Read for EndlessMemoPuts {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for byte in buf.iter_mut() {
            *byte = match self.pos {
                0 => PROTO,
                1 => 2,
                2 => NONE,
                p if p % 2 == 1 => BINPUT,
                _ => 0,
            };
            self.pos += 1;
        }
        Ok(buf.len())
    }
}

#[test]
fn pickle_size_is_limited_even_when_nothing_grows() {
    // The limit lowered to 1 MiB to keep the test quick; the reading is the same.
    let msg = read_pickle_within(std::io::BufReader::new(EndlessMemoPuts { pos: 0 }), 1 << 20)
        .expect_err("an endless pickle");
    assert!(
        msg.contains("larger than 1048576 bytes, the pickle size limit"),
        "{msg}"
    );
}

#[test]
fn only_the_calls_and_states_torch_writes_are_accepted() {
    // OrderedDict() is an empty dict; BUILD on it keeps it (the state is `_metadata`).
    let p = read(&pickle(b"ccollections\nOrderedDict\n)R}b")).unwrap();
    assert_eq!(p.get(p.root()), &Value::Dict(Vec::new()));
    let msg = err(&pickle(b"ccollections\nOrderedDict\nN\x85R"));
    assert!(msg.contains("OrderedDict from arguments"), "{msg}");
    let msg = err(&pickle(b"]}b"));
    assert!(msg.contains("sets the state of a list"), "{msg}");
    let msg = err(&pickle(b"N)R"));
    assert!(msg.contains("calls None"), "{msg}");
    // A rebuild function is recorded, not run.
    let p = read(&pickle(b"ctorch._utils\n_rebuild_tensor_v2\n)R")).unwrap();
    assert!(matches!(
        p.get(p.root()),
        Value::Call {
            func: Global::RebuildTensorV2,
            ..
        }
    ));
}
