//! Reading one `XLA_FFI_CallFrame`: the metadata query, and the checked
//! decoding of the logging call's buffer and attributes.
//!
//! Invariants:
//! - Every struct XLA hands us is checked for `struct_size >= *_SIZE` before
//!   a field is read; every count, dtype, rank and attribute is checked before
//!   a pointer derived from it is followed. Anything unexpected is a
//!   [`Failure`] naming the problem, never a panic.
//! - The logging call has exactly one argument (the packed values, `f64` or
//!   `f32`), no results, and `i64` scalar attributes in one of two forms:
//!   - direct: `logger_id` and `template_id` (a ring template id of that
//!     logger); the buffer is rank 1 with at most [`MAX_VALUES`] values;
//!   - routed: `template_key` (a process-stable key resolved through
//!     [`crate::route`]), and optionally `rows = 1`: then the buffer is
//!     rank 2, one row per `vmap` element, `[keep, values...]`, with at most
//!     [`MAX_VALUES`] values after the keep flag. Without `rows` it is rank 1.
//! - The buffer's data pointer is not dereferenced here: on CUDA it is device
//!   memory. [`Packed::read_host`] reads it on the CPU platform.
use std::ffi::c_void;
use std::slice;

use ringlog::MAX_VALUES;

use crate::abi::{self, CallFrame, Metadata, MetadataExtension};
use crate::error::Failure;

/// Element type of the packed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// The widest row a buffer may have: a keep flag and a full record.
pub const MAX_ROW: usize = MAX_VALUES + 1;

/// The packed values buffer, not yet read: `rows` rows of `len` values
/// (one row for a rank-1 buffer).
#[derive(Clone, Copy, Debug)]
pub struct Packed {
    pub dtype: Dtype,
    pub data: *const c_void,
    pub rows: usize,
    pub len: usize,
}

impl Packed {
    /// Size of the buffer in bytes.
    pub fn bytes(&self) -> usize {
        self.rows * self.len * self.dtype.size()
    }

    /// Copies row `row`, widened to `f64`, into `out` and returns it.
    ///
    /// # Safety
    /// `data` points to `rows * len` host-readable, suitably aligned elements
    /// of `dtype` (true for XLA:CPU buffers, which XLA aligns to at least 16),
    /// and `row < rows`.
    pub unsafe fn read_host<'a>(&self, row: usize, out: &'a mut [f64; MAX_ROW]) -> &'a [f64] {
        let n = self.len.min(MAX_ROW);
        if n == 0 {
            return &out[..0];
        }
        let start = row * self.len;
        // SAFETY: the caller's contract; start + n <= rows * len.
        unsafe {
            match self.dtype {
                Dtype::F64 => {
                    let src: *const f64 = self.data.cast();
                    out[..n].copy_from_slice(slice::from_raw_parts(src.add(start), n))
                }
                Dtype::F32 => {
                    let src: *const f32 = self.data.cast();
                    let src = slice::from_raw_parts(src.add(start), n);
                    for (o, &v) in out.iter_mut().zip(src) {
                        *o = f64::from(v);
                    }
                }
            }
        }
        &out[..n]
    }
}

/// Where a call's record goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Ring template `template_id` of the logger with id `logger_id`.
    Direct { logger_id: u64, template_id: u32 },
    /// Template key `key` of the active route; `rows`: rank-2 keep-flagged rows.
    Routed { key: u32, rows: bool },
}

/// One decoded logging call.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub packed: Packed,
    pub target: Target,
}

/// What XLA asked for.
pub enum Request {
    /// The metadata query was answered in place.
    Metadata,
    /// Push one record.
    Execute(Call),
}

/// Checks the frame and answers the metadata query or decodes the call.
///
/// # Safety
/// `frame` is the non-null call frame XLA passed to the handler, and every
/// pointer in it is valid as the C API documents.
pub unsafe fn decode(frame: &CallFrame) -> Result<Request, Failure> {
    if frame.struct_size < abi::CALL_FRAME_SIZE {
        return Err(Failure::invalid(format!(
            "XLA_FFI_CallFrame is {} bytes, expected at least {}: jaxlib is older than the XLA \
             FFI API {}.{} this extension was built for",
            frame.struct_size,
            abi::CALL_FRAME_SIZE,
            abi::API_MAJOR,
            abi::API_MINOR
        )));
    }
    // SAFETY: the caller's contract covers every pointer we follow below.
    unsafe {
        if let Some(ext) = frame.extension_start.as_ref() {
            if ext.kind == abi::EXTENSION_METADATA {
                answer_metadata(frame.extension_start.cast())?;
                return Ok(Request::Metadata);
            }
        }
        if frame.stage != abi::STAGE_EXECUTE {
            return Err(Failure::invalid(format!(
                "called at execution stage {}, only the execute stage ({}) is registered",
                frame.stage,
                abi::STAGE_EXECUTE
            )));
        }
        let target = decode_attrs(frame)?;
        let rows = matches!(target, Target::Routed { rows: true, .. });
        let packed = decode_args(frame, rows)?;
        decode_rets(frame)?;
        Ok(Request::Execute(Call { packed, target }))
    }
}

/// Fills the metadata XLA asks for when the handler is registered: the API
/// version we were built for, no traits (in particular not command-buffer
/// compatible: the CUDA handler enqueues a host function, which must not be
/// captured into a CUDA graph), and no state.
///
/// # Safety
/// `ext` is non-null and is the `XLA_FFI_Metadata_Extension` XLA put in the
/// frame's extension chain (its type tag says so), valid for the call; its
/// `metadata` is null or XLA's metadata struct.
unsafe fn answer_metadata(ext: *mut MetadataExtension) -> Result<(), Failure> {
    // SAFETY: `ext` is non-null (checked by the caller) and, having the
    // metadata type tag, is an XLA_FFI_Metadata_Extension.
    let ext = unsafe { &mut *ext };
    if ext.extension_base.struct_size < abi::METADATA_EXTENSION_SIZE {
        return Err(Failure::invalid(format!(
            "XLA_FFI_Metadata_Extension is {} bytes, expected at least {}",
            ext.extension_base.struct_size,
            abi::METADATA_EXTENSION_SIZE
        )));
    }
    // SAFETY: as above; XLA points `metadata` at its own metadata struct.
    let Some(meta) = (unsafe { ext.metadata.as_mut() }) else {
        return Err(Failure::invalid("metadata query without a metadata struct"));
    };
    if meta.struct_size < abi::METADATA_SIZE {
        return Err(Failure::invalid(format!(
            "XLA_FFI_Metadata is {} bytes, expected at least {}",
            meta.struct_size,
            abi::METADATA_SIZE
        )));
    }
    meta.api_version = abi::ApiVersion {
        struct_size: abi::API_VERSION_SIZE,
        extension_start: std::ptr::null_mut(),
        major_version: abi::API_MAJOR,
        minor_version: abi::API_MINOR,
    };
    meta.traits = 0;
    // `state_type_id` lies past the header's declared struct size; write it
    // only when XLA says its struct has room for it.
    let through_state = std::mem::offset_of!(Metadata, state_type_id) + 8;
    if meta.struct_size >= through_state {
        meta.state_type_id = abi::TypeId { type_id: 0 };
    }
    Ok(())
}

fn dtype_name(dtype: i32) -> String {
    match dtype {
        1 => "bool".into(),
        4 => "int32".into(),
        5 => "int64".into(),
        10 => "float16".into(),
        11 => "float32".into(),
        12 => "float64".into(),
        16 => "bfloat16".into(),
        other => format!("XLA dtype {other}"),
    }
}

/// Checks and decodes the one buffer argument.
///
/// # Safety
/// `frame` is XLA's call frame: `args.types`/`args.args` point to `size`
/// entries and a buffer-typed entry to an `XLA_FFI_Buffer` whose `dims` has
/// `rank` elements, all valid for the call.
unsafe fn decode_args(frame: &CallFrame, rows: bool) -> Result<Packed, Failure> {
    let args = &frame.args;
    if args.struct_size < abi::ARGS_SIZE {
        return Err(Failure::invalid(format!(
            "XLA_FFI_Args is {} bytes, expected at least {}",
            args.struct_size,
            abi::ARGS_SIZE
        )));
    }
    if args.size != 1 || args.types.is_null() || args.args.is_null() {
        return Err(Failure::invalid(format!(
            "expected exactly 1 argument (the packed values), got {}",
            args.size
        )));
    }
    // SAFETY: size is 1 and both arrays are non-null.
    let (kind, arg) = unsafe { (*args.types, *args.args) };
    if kind != abi::ARG_BUFFER {
        return Err(Failure::invalid(format!(
            "argument 0 has type {kind}, expected a buffer"
        )));
    }
    // SAFETY: a buffer-typed argument points to an XLA_FFI_Buffer.
    let Some(buf) = (unsafe { arg.cast::<abi::Buffer>().as_ref() }) else {
        return Err(Failure::invalid("argument 0 is a null buffer"));
    };
    if buf.struct_size < abi::BUFFER_SIZE {
        return Err(Failure::invalid(format!(
            "XLA_FFI_Buffer is {} bytes, expected at least {}",
            buf.struct_size,
            abi::BUFFER_SIZE
        )));
    }
    let dtype = match buf.dtype {
        abi::DTYPE_F64 => Dtype::F64,
        abi::DTYPE_F32 => Dtype::F32,
        other => {
            return Err(Failure::invalid(format!(
                "packed values have dtype {}, expected float64 or float32",
                dtype_name(other)
            )))
        }
    };
    let rank = if rows { 2 } else { 1 };
    if buf.rank != rank || buf.dims.is_null() {
        return Err(Failure::invalid(if rows {
            format!(
                "packed rows have rank {}, expected a rank-2 array (one row per batch element)",
                buf.rank
            )
        } else {
            format!(
                "packed values have rank {}, expected a rank-1 array",
                buf.rank
            )
        }));
    }
    // SAFETY: dims has `rank` elements.
    let (n_rows, len) = unsafe {
        if rows {
            (*buf.dims, *buf.dims.add(1))
        } else {
            (1, *buf.dims)
        }
    };
    let max_len = if rows { MAX_ROW } else { MAX_VALUES };
    if n_rows < 0 || len < 0 || len as u64 > max_len as u64 {
        return Err(Failure::invalid(if rows {
            format!(
                "packed rows are {n_rows} x {len}; a row holds a keep flag and at most \
                 {MAX_VALUES} values"
            )
        } else {
            format!("packed values have {len} elements, a record holds at most {MAX_VALUES}")
        }));
    }
    if rows && len == 0 {
        return Err(Failure::invalid("packed rows have no keep-flag column"));
    }
    if n_rows > 0 && len > 0 && buf.data.is_null() {
        return Err(Failure::invalid(
            "packed values buffer has a null data pointer",
        ));
    }
    Ok(Packed {
        dtype,
        data: buf.data,
        rows: n_rows as usize,
        len: len as usize,
    })
}

fn decode_rets(frame: &CallFrame) -> Result<(), Failure> {
    let rets = &frame.rets;
    if rets.struct_size < abi::RETS_SIZE {
        return Err(Failure::invalid(format!(
            "XLA_FFI_Rets is {} bytes, expected at least {}",
            rets.struct_size,
            abi::RETS_SIZE
        )));
    }
    if rets.size != 0 {
        return Err(Failure::invalid(format!(
            "expected no results, got {}",
            rets.size
        )));
    }
    Ok(())
}

/// Reads one `i64` scalar attribute.
///
/// # Safety
/// When `kind` is the scalar tag, `attr` is null or points to an
/// `XLA_FFI_Scalar` whose `value` (when the dtype is S64) points to 8
/// readable bytes, valid for the call.
unsafe fn scalar_i64(name: &str, kind: i32, attr: *mut c_void) -> Result<i64, Failure> {
    if kind != abi::ATTR_SCALAR {
        return Err(Failure::invalid(format!(
            "attribute `{name}` has attribute type {kind}, expected a scalar"
        )));
    }
    // SAFETY: a scalar-typed attribute points to an XLA_FFI_Scalar.
    let Some(scalar) = (unsafe { attr.cast::<abi::Scalar>().as_ref() }) else {
        return Err(Failure::invalid(format!("attribute `{name}` is null")));
    };
    if scalar.dtype != abi::DTYPE_S64 || scalar.value.is_null() {
        return Err(Failure::invalid(format!(
            "attribute `{name}` has dtype {}, expected int64 (pass np.int64(...))",
            dtype_name(scalar.dtype)
        )));
    }
    // SAFETY: an S64 scalar's value points to one i64; read_unaligned because
    // the C API promises no alignment for attribute storage.
    Ok(unsafe { scalar.value.cast::<i64>().read_unaligned() })
}

/// Checks and decodes the attributes into the call's target.
///
/// # Safety
/// `frame` is XLA's call frame: `attrs.types`, `attrs.names` and
/// `attrs.attrs` point to `size` entries, each name to a byte span of `len`
/// bytes and each attribute as its type tag says, all valid for the call.
unsafe fn decode_attrs(frame: &CallFrame) -> Result<Target, Failure> {
    let attrs = &frame.attrs;
    if attrs.struct_size < abi::ATTRS_SIZE {
        return Err(Failure::invalid(format!(
            "XLA_FFI_Attrs is {} bytes, expected at least {}",
            attrs.struct_size,
            abi::ATTRS_SIZE
        )));
    }
    let n = attrs.size;
    if n < 0 || (n > 0 && (attrs.types.is_null() || attrs.names.is_null() || attrs.attrs.is_null()))
    {
        return Err(Failure::invalid(format!(
            "malformed attribute list of size {n}"
        )));
    }
    let (mut template_id, mut logger_id, mut key, mut rows) = (None, None, None, None);
    for i in 0..n as usize {
        // SAFETY: i < size and the three arrays are non-null; each name is
        // a byte span of `len` bytes.
        let (kind, name, attr) = unsafe {
            let span = (*attrs.names.add(i)).as_ref();
            let name = match span {
                Some(s) if !s.ptr.is_null() => slice::from_raw_parts(s.ptr.cast::<u8>(), s.len),
                _ => b"" as &[u8],
            };
            (*attrs.types.add(i), name, *attrs.attrs.add(i))
        };
        let slot = match name {
            b"template_id" => &mut template_id,
            b"logger_id" => &mut logger_id,
            b"template_key" => &mut key,
            b"rows" => &mut rows,
            other => {
                return Err(Failure::invalid(format!(
                    "unexpected attribute `{}`; expected `logger_id` and `template_id`, or \
                     `template_key` (and optionally `rows`)",
                    String::from_utf8_lossy(other)
                )))
            }
        };
        let name = String::from_utf8_lossy(name);
        // SAFETY: `attr` comes from XLA's attribute array.
        *slot = Some(unsafe { scalar_i64(&name, kind, attr)? });
    }
    let id32 = |name: &str, v: i64| {
        u32::try_from(v)
            .map_err(|_| Failure::invalid(format!("{name} {v} is outside 0..=4294967295")))
    };
    match (logger_id, template_id, key, rows) {
        (Some(l), Some(t), None, None) => Ok(Target::Direct {
            logger_id: u64::try_from(l)
                .map_err(|_| Failure::invalid(format!("logger_id {l} is negative")))?,
            template_id: id32("template_id", t)?,
        }),
        (None, None, Some(k), rows) => Ok(Target::Routed {
            key: id32("template_key", k)?,
            rows: match rows {
                None | Some(0) => false,
                Some(1) => true,
                Some(r) => return Err(Failure::invalid(format!("rows must be 0 or 1, got {r}"))),
            },
        }),
        (None, Some(_), None, None) => Err(Failure::invalid("missing int64 attribute `logger_id`")),
        (Some(_), None, None, None) => {
            Err(Failure::invalid("missing int64 attribute `template_id`"))
        }
        _ => Err(Failure::invalid(
            "attributes must be either `logger_id` and `template_id`, or `template_key` \
             (and optionally `rows`)",
        )),
    }
}
