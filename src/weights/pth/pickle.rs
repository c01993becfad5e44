//! The project's own reader for the pickles `torch.save` writes (protocol 2, and the
//! protocol-4 opcodes a re-saved file may use), executing nothing.
//!
//! It understands only the opcodes torch uses for a state dict or a bare tensor, and
//! builds plain values: a GLOBAL is only a name, checked against the few torch rebuild
//! functions, storage classes and `collections.OrderedDict` that a weight file names;
//! a REDUCE of a rebuild function is recorded as a [`Value::Call`] for the tensor table
//! to interpret, and `OrderedDict()` becomes an empty dict.
//!
//! It is bounded by construction, whatever the bytes say:
//! - values live in one arena (`Vec<Value>`) and refer to each other by index, so a memo
//!   GET shares the value instead of copying it, and dropping the arena is flat (no
//!   recursion, however deep the nesting);
//! - the number of values created and of memo entries is capped ([`MAX_VALUES`]);
//! - nesting (open MARKs, and containers inside containers) is capped ([`MAX_DEPTH`]);
//! - strings are capped ([`MAX_STRING_BYTES`]) and read only as far as bytes arrive;
//! - the pickle is streamed, never held whole, and capped ([`MAX_PICKLE_BYTES`]).
//!
//! Nothing here walks the value graph recursively, so the depth limit is a sanity bound
//! (a weight file nests a handful of levels), not what keeps the stack safe.

use std::collections::HashMap;
use std::io::Read;

/// Index of a value in [`Pickle::values`].
pub type Id = u32;

/// Values created (and memo entries stored) at most. A state dict needs about 15 values
/// per tensor, so this admits some 60,000 tensors, far more than any FlashVSR file.
pub const MAX_VALUES: usize = 1_000_000;
/// Nesting levels at most (a state dict nests about 5).
pub const MAX_DEPTH: u16 = 64;
/// Longest string (a tensor name or a constant such as `'storage'`).
pub const MAX_STRING_BYTES: usize = 1 << 16;
/// A state dict's pickle is a few MB even for billions of parameters.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// A name a GLOBAL opcode may give: only these appear in torch weight files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`, as `_rebuild_from_type_v2`'s type.
    TensorType,
    /// `torch.<X>Storage`, by its index in [`Pickle::storage_classes`].
    Storage(u32),
}

/// One value of the pickle; containers hold [`Id`]s of older (or shared) values.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Entries in insertion order (an `OrderedDict` or a plain dict).
    Dict(Vec<(Id, Id)>),
    Global(Global),
    /// A call of a torch rebuild function with its argument tuple, not executed.
    Call {
        func: Global,
        args: Id,
    },
    /// The argument of a BINPERSID (torch's storage descriptor tuple).
    PersistentId(Id),
}

impl Value {
    /// A few words saying what the value is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Call { .. } => "a tensor rebuild call",
            Value::PersistentId(_) => "a persistent id",
        }
    }
}

/// What [`Pickle::get`] gives for an index outside the arena (none is handed out).
static NO_VALUE: Value = Value::None;

/// A decoded pickle: its values and which one is the root.
#[derive(Debug)]
pub struct Pickle {
    values: Vec<Value>,
    storage_classes: Vec<String>,
    root: Id,
}

impl Pickle {
    pub fn root(&self) -> Id {
        self.root
    }

    pub fn get(&self, id: Id) -> &Value {
        // Every Id handed out indexes the arena; a default keeps this total.
        self.values.get(id as usize).unwrap_or(&NO_VALUE)
    }

    /// The class name of storage class `index` (e.g. `FloatStorage`).
    pub fn storage_class(&self, index: u32) -> &str {
        self.storage_classes
            .get(index as usize)
            .map_or("", String::as_str)
    }
}

// Opcodes, with Python's `pickletools` names.
const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const EMPTY_DICT: u8 = b'}';
const EMPTY_LIST: u8 = b']';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const BINUNICODE: u8 = b'X';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const GLOBAL: u8 = b'c';
const STACK_GLOBAL: u8 = 0x93;
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const BINPERSID: u8 = b'Q';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const MEMOIZE: u8 = 0x94;
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';

/// What the operand stack holds: a MARK, or a value.
#[derive(Clone, Copy)]
enum Slot {
    Mark,
    Value(Id),
}

/// The interpreter's state while it reads.
struct Machine<R: Read> {
    input: R,
    /// Bytes consumed so far (for positions in messages, and the byte cap).
    pos: u64,
    max_bytes: u64,
    values: Vec<Value>,
    /// Nesting depth of each value (1 for a scalar).
    depths: Vec<u16>,
    storage_classes: Vec<String>,
    stack: Vec<Slot>,
    /// Open MARKs.
    marks: u16,
    memo: HashMap<u32, Id>,
}

/// Decodes the pickle read from `input`. Errors are one sentence, to follow the name of
/// the pickle (e.g. "does not parse at byte 12: ...").
pub fn read_pickle(input: impl Read) -> Result<Pickle, String> {
    read_pickle_within(input, MAX_PICKLE_BYTES)
}

/// [`read_pickle`] with a cap of `max_bytes` on the pickle's length.
fn read_pickle_within(input: impl Read, max_bytes: u64) -> Result<Pickle, String> {
    let mut machine = Machine {
        input: input.take(max_bytes + 1),
        max_bytes,
        pos: 0,
        values: Vec::new(),
        depths: Vec::new(),
        storage_classes: Vec::new(),
        stack: Vec::new(),
        marks: 0,
        memo: HashMap::new(),
    };
    loop {
        let at = machine.pos;
        let op = machine.byte()?;
        if op == STOP {
            let root = machine.pop(at)?;
            return Ok(Pickle {
                values: machine.values,
                storage_classes: machine.storage_classes,
                root,
            });
        }
        machine.step(op, at)?;
    }
}

impl<R: Read> Machine<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                if self.pos > self.max_bytes {
                    return Err(format!(
                        "is larger than {} bytes, the pickle size limit",
                        self.max_bytes
                    ));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(format!("ends at byte {} without a STOP opcode", self.pos))
            }
            Err(e) => Err(format!("is unreadable at byte {}: {e}", self.pos)),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut buf = [0u8; N];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn line(&mut self, at: u64) -> Result<String, String> {
        let mut text = Vec::new();
        loop {
            match self.byte()? {
                b'\n' => break,
                b => text.push(b),
            }
            if text.len() > MAX_STRING_BYTES {
                return Err(format!(
                    "has a name longer than {MAX_STRING_BYTES} bytes at byte {at}"
                ));
            }
        }
        String::from_utf8(text).map_err(|_| format!("has a name that is not UTF-8 at byte {at}"))
    }

    fn string(&mut self, len: u64, at: u64) -> Result<String, String> {
        if len > MAX_STRING_BYTES as u64 {
            return Err(format!(
                "has a string of {len} bytes at byte {at}, longer than the {MAX_STRING_BYTES}-byte string limit"
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.read_exact(&mut bytes)?;
        String::from_utf8(bytes).map_err(|_| format!("has a string that is not UTF-8 at byte {at}"))
    }

    /// Adds a value of nesting `depth`, within the value and depth limits.
    fn create(&mut self, value: Value, depth: u16, at: u64) -> Result<Id, String> {
        if self.values.len() >= MAX_VALUES {
            return Err(format!(
                "creates more than {MAX_VALUES} objects by byte {at} (the object count limit)"
            ));
        }
        if depth > MAX_DEPTH {
            return Err(too_deep(at));
        }
        let id = self.values.len() as Id;
        self.values.push(value);
        self.depths.push(depth);
        Ok(id)
    }

    fn push_new(&mut self, value: Value, depth: u16, at: u64) -> Result<(), String> {
        let id = self.create(value, depth, at)?;
        self.stack.push(Slot::Value(id));
        Ok(())
    }

    fn depth(&self, id: Id) -> u16 {
        self.depths.get(id as usize).copied().unwrap_or(1)
    }

    /// The depth of a container holding `items`.
    fn container_depth(&self, items: impl IntoIterator<Item = Id>) -> u16 {
        items
            .into_iter()
            .map(|id| self.depth(id))
            .max()
            .unwrap_or(0)
            .saturating_add(1)
    }

    fn pop(&mut self, at: u64) -> Result<Id, String> {
        match self.stack.pop() {
            Some(Slot::Value(id)) => Ok(id),
            Some(Slot::Mark) => Err(format!(
                "does not parse at byte {at}: a MARK where a value belongs"
            )),
            None => Err(format!("does not parse at byte {at}: the stack is empty")),
        }
    }

    fn top(&self, at: u64) -> Result<Id, String> {
        match self.stack.last() {
            Some(Slot::Value(id)) => Ok(*id),
            _ => Err(format!(
                "does not parse at byte {at}: no value on the stack"
            )),
        }
    }

    /// Pops the values above the last MARK, and the MARK.
    fn pop_to_mark(&mut self, at: u64) -> Result<Vec<Id>, String> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return Err(format!("does not parse at byte {at}: no MARK to close"));
        };
        let items = self
            .stack
            .drain(mark + 1..)
            .filter_map(|s| match s {
                Slot::Value(id) => Some(id),
                Slot::Mark => None,
            })
            .collect();
        self.stack.truncate(mark);
        self.marks = self.marks.saturating_sub(1);
        Ok(items)
    }

    fn memo_put(&mut self, index: u32, at: u64) -> Result<(), String> {
        let id = self.top(at)?;
        if !self.memo.contains_key(&index) && self.memo.len() >= MAX_VALUES {
            return Err(format!(
                "stores more than {MAX_VALUES} memo entries by byte {at} (the object count limit)"
            ));
        }
        self.memo.insert(index, id);
        Ok(())
    }

    fn memo_get(&mut self, index: u32, at: u64) -> Result<(), String> {
        match self.memo.get(&index) {
            // Shared, not copied: the same value is now referenced twice.
            Some(&id) => {
                self.stack.push(Slot::Value(id));
                Ok(())
            }
            None => Err(format!(
                "does not parse at byte {at}: memo entry {index} is unset"
            )),
        }
    }

    fn tuple(&mut self, items: Vec<Id>, at: u64) -> Result<(), String> {
        let depth = self.container_depth(items.iter().copied());
        self.push_new(Value::Tuple(items), depth, at)
    }

    fn last_n(&mut self, n: usize, at: u64) -> Result<Vec<Id>, String> {
        let mut items = vec![0; n];
        for item in items.iter_mut().rev() {
            *item = self.pop(at)?;
        }
        Ok(items)
    }

    fn global(&mut self, module: &str, name: &str, at: u64) -> Result<(), String> {
        let known = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorType,
            ("torch", class) if class.ends_with("Storage") && !class.contains('.') => {
                let index = match self.storage_classes.iter().position(|c| c == class) {
                    Some(i) => i,
                    None => {
                        self.storage_classes.push(class.to_string());
                        self.storage_classes.len() - 1
                    }
                };
                Global::Storage(index as u32)
            }
            _ => {
                return Err(format!(
                    "names '{module}.{name}' at byte {at}, which no weight file uses; refused \
                     without running it"
                ));
            }
        };
        self.push_new(Value::Global(known), 1, at)
    }

    /// Adds `entries` (key, value pairs) to the dict below them on the stack.
    fn set_items(&mut self, entries: Vec<Id>, at: u64) -> Result<(), String> {
        if !entries.len().is_multiple_of(2) {
            return Err(format!(
                "does not parse at byte {at}: a key without a value"
            ));
        }
        let dict = self.top(at)?;
        let depth = self
            .container_depth(entries.iter().copied())
            .max(self.depth(dict));
        if depth > MAX_DEPTH {
            return Err(too_deep(at));
        }
        let Some(Value::Dict(items)) = self.values.get_mut(dict as usize) else {
            return Err(format!(
                "does not parse at byte {at}: SETITEM on something not a dict"
            ));
        };
        items.extend(entries.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        self.depths[dict as usize] = depth;
        Ok(())
    }

    fn append(&mut self, new: Vec<Id>, at: u64) -> Result<(), String> {
        let list = self.top(at)?;
        let depth = self
            .container_depth(new.iter().copied())
            .max(self.depth(list));
        if depth > MAX_DEPTH {
            return Err(too_deep(at));
        }
        let Some(Value::List(items)) = self.values.get_mut(list as usize) else {
            return Err(format!(
                "does not parse at byte {at}: APPEND on something not a list"
            ));
        };
        items.extend(new);
        self.depths[list as usize] = depth;
        Ok(())
    }

    /// REDUCE: `OrderedDict()` gives an empty dict; a torch rebuild function gives a
    /// [`Value::Call`]; anything else is refused.
    fn reduce(&mut self, at: u64) -> Result<(), String> {
        let args = self.pop(at)?;
        let func = self.pop(at)?;
        let Value::Global(func) = *self.get(func) else {
            return Err(format!(
                "calls {} at byte {at}, which is not a function",
                self.get(func).kind()
            ));
        };
        let Value::Tuple(arg_items) = self.get(args) else {
            return Err(format!(
                "does not parse at byte {at}: call arguments are not a tuple"
            ));
        };
        match func {
            Global::OrderedDict if arg_items.is_empty() => {
                self.push_new(Value::Dict(Vec::new()), 1, at)
            }
            Global::OrderedDict => Err(format!(
                "builds an OrderedDict from arguments at byte {at}, which torch never writes"
            )),
            Global::RebuildTensorV2
            | Global::RebuildParameter
            | Global::RebuildParameterWithState
            | Global::RebuildFromTypeV2 => {
                let depth = self.depth(args).saturating_add(1);
                self.push_new(Value::Call { func, args }, depth, at)
            }
            Global::TensorType | Global::Storage(_) => Err(format!(
                "constructs a torch class directly at byte {at}, which torch never writes"
            )),
        }
    }

    fn get(&self, id: Id) -> &Value {
        self.values.get(id as usize).unwrap_or(&NO_VALUE)
    }

    fn step(&mut self, op: u8, at: u64) -> Result<(), String> {
        match op {
            PROTO => {
                let version = self.byte()?;
                if version > 5 {
                    return Err(format!("uses pickle protocol {version}, unknown"));
                }
            }
            FRAME => {
                // A frame length only helps readers that buffer; this one streams.
                self.array::<8>()?;
            }
            MARK => {
                if self.marks >= MAX_DEPTH {
                    return Err(too_deep(at));
                }
                self.marks += 1;
                self.stack.push(Slot::Mark);
            }
            EMPTY_DICT => self.push_new(Value::Dict(Vec::new()), 1, at)?,
            EMPTY_LIST => self.push_new(Value::List(Vec::new()), 1, at)?,
            EMPTY_TUPLE => self.tuple(Vec::new(), at)?,
            TUPLE => {
                let items = self.pop_to_mark(at)?;
                self.tuple(items, at)?;
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let items = self.last_n(usize::from(op - TUPLE1) + 1, at)?;
                self.tuple(items, at)?;
            }
            SETITEM => {
                let entry = self.last_n(2, at)?;
                self.set_items(entry, at)?;
            }
            SETITEMS => {
                let entries = self.pop_to_mark(at)?;
                self.set_items(entries, at)?;
            }
            APPEND => {
                let item = self.pop(at)?;
                self.append(vec![item], at)?;
            }
            APPENDS => {
                let items = self.pop_to_mark(at)?;
                self.append(items, at)?;
            }
            BINUNICODE => {
                let len = u32::from_le_bytes(self.array()?);
                let s = self.string(u64::from(len), at)?;
                self.push_new(Value::Str(s), 1, at)?;
            }
            SHORT_BINUNICODE => {
                let len = self.byte()?;
                let s = self.string(u64::from(len), at)?;
                self.push_new(Value::Str(s), 1, at)?;
            }
            BINUNICODE8 => {
                let len = u64::from_le_bytes(self.array()?);
                let s = self.string(len, at)?;
                self.push_new(Value::Str(s), 1, at)?;
            }
            BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.push_new(Value::Int(i64::from(v)), 1, at)?;
            }
            BININT1 => {
                let v = self.byte()?;
                self.push_new(Value::Int(i64::from(v)), 1, at)?;
            }
            BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.push_new(Value::Int(i64::from(v)), 1, at)?;
            }
            LONG1 => {
                let n = self.byte()?;
                if n > 8 {
                    return Err(format!(
                        "has an integer of {n} bytes at byte {at}, wider than 64 bits"
                    ));
                }
                let mut le = [0u8; 8];
                self.read_exact(&mut le[..usize::from(n)])?;
                // Two's complement: sign-extend from the top byte read.
                if n > 0 && n < 8 && le[usize::from(n) - 1] & 0x80 != 0 {
                    le[usize::from(n)..].fill(0xff);
                }
                self.push_new(Value::Int(i64::from_le_bytes(le)), 1, at)?;
            }
            BINFLOAT => {
                let v = f64::from_be_bytes(self.array()?);
                self.push_new(Value::Float(v), 1, at)?;
            }
            NONE => self.push_new(Value::None, 1, at)?,
            NEWTRUE => self.push_new(Value::Bool(true), 1, at)?,
            NEWFALSE => self.push_new(Value::Bool(false), 1, at)?,
            GLOBAL => {
                let module = self.line(at)?;
                let name = self.line(at)?;
                self.global(&module, &name, at)?;
            }
            STACK_GLOBAL => {
                let name = self.pop(at)?;
                let module = self.pop(at)?;
                let (Value::Str(module), Value::Str(name)) = (self.get(module), self.get(name))
                else {
                    return Err(format!(
                        "does not parse at byte {at}: STACK_GLOBAL without two strings"
                    ));
                };
                let (module, name) = (module.clone(), name.clone());
                self.global(&module, &name, at)?;
            }
            REDUCE => self.reduce(at)?,
            BUILD => {
                // The state of an OrderedDict is its attributes (torch's `_metadata`),
                // which the tensor table does not need.
                let _state = self.pop(at)?;
                let target = self.top(at)?;
                if !matches!(self.get(target), Value::Dict(_)) {
                    return Err(format!(
                        "sets the state of {} at byte {at}, which torch never writes",
                        self.get(target).kind()
                    ));
                }
            }
            BINPERSID => {
                let pid = self.pop(at)?;
                let depth = self.depth(pid).saturating_add(1);
                self.push_new(Value::PersistentId(pid), depth, at)?;
            }
            BINPUT => {
                let index = self.byte()?;
                self.memo_put(u32::from(index), at)?;
            }
            LONG_BINPUT => {
                let index = u32::from_le_bytes(self.array()?);
                self.memo_put(index, at)?;
            }
            MEMOIZE => {
                let index = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                self.memo_put(index, at)?;
            }
            BINGET => {
                let index = self.byte()?;
                self.memo_get(u32::from(index), at)?;
            }
            LONG_BINGET => {
                let index = u32::from_le_bytes(self.array()?);
                self.memo_get(index, at)?;
            }
            other => {
                return Err(format!(
                    "has opcode 0x{other:02x} at byte {at}, which torch's state dicts do not use"
                ));
            }
        }
        Ok(())
    }
}

fn too_deep(at: u64) -> String {
    format!("nests more than {MAX_DEPTH} levels deep at byte {at} (the nesting limit)")
}

#[cfg(test)]
mod tests;
