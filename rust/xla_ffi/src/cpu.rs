//! The XLA:CPU handler: XLA calls it on its own thread with host buffers, and
//! it pushes the record (or, for `vmap` rows, each kept row) straight into
//! the ring: no Python, no allocation.
use crate::abi::{CallFrame, XlaError};
use crate::error::Failure;
use crate::frame::{Call, Target, MAX_ROW};
use crate::handler::guarded;
use crate::{push, route};

/// Where decoded records go; the ring in production, a recorder in tests.
pub trait Deliver {
    /// A direct record: ring template `template_id` of logger `logger_id`.
    fn direct(&mut self, logger_id: u64, template_id: u32, values: &[f64]) -> Result<(), Failure>;
    /// A routed record for template key `key` (never fails the call).
    fn routed(&mut self, key: u32, values: &[f64]);
}

/// The production [`Deliver`]: the ring logger registry and the route table.
pub struct Ring;

impl Deliver for Ring {
    fn direct(&mut self, logger_id: u64, template_id: u32, values: &[f64]) -> Result<(), Failure> {
        push::deliver(logger_id, template_id, values)
    }

    fn routed(&mut self, key: u32, values: &[f64]) {
        route::deliver(key, values)
    }
}

/// Reads a decoded call's host buffer and hands its record(s) to `sink`.
///
/// # Safety
/// `call.packed` describes host memory (XLA:CPU, or a landed staging slot).
pub unsafe fn dispatch<D: Deliver>(call: &Call, sink: &mut D) -> Result<(), Failure> {
    let mut buf = [0.0; MAX_ROW];
    match call.target {
        Target::Direct {
            logger_id,
            template_id,
        } => {
            // SAFETY: the caller's contract; a direct buffer has one row.
            let values = unsafe { call.packed.read_host(0, &mut buf) };
            sink.direct(logger_id, template_id, values)
        }
        Target::Routed { key, rows: false } => {
            // SAFETY: as above.
            let values = unsafe { call.packed.read_host(0, &mut buf) };
            sink.routed(key, values);
            Ok(())
        }
        Target::Routed { key, rows: true } => {
            for row in 0..call.packed.rows {
                // SAFETY: as above; row < rows.
                let values = unsafe { call.packed.read_host(row, &mut buf) };
                // Column 0 is the keep flag (decode guarantees it exists).
                if values[0] != 0.0 {
                    sink.routed(key, &values[1..]);
                }
            }
            Ok(())
        }
    }
}

/// Runs the CPU handler body with `sink` in place of the ring.
///
/// # Safety
/// As for [`cpu_handler`].
pub unsafe fn execute_with<D: Deliver>(frame: *mut CallFrame, sink: &mut D) -> *mut XlaError {
    // SAFETY: forwarded contract; on XLA:CPU the buffer is host memory of the
    // checked dtype and shape.
    unsafe { guarded(frame, |_, call: Call| dispatch(&call, sink)) }
}

/// `XLA_FFI_Handler` for platform "cpu".
///
/// # Safety
/// Called by XLA with a valid call frame (or null, which is reported as
/// nothing and counted).
pub unsafe extern "C" fn cpu_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: XLA's contract for handlers.
    unsafe { execute_with(frame, &mut Ring) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi;
    use crate::stats;
    use crate::testing::{take_error, FakeError, Fixture};
    use std::cell::RefCell;

    type Seen = RefCell<Vec<(u64, u32, Vec<f64>)>>;

    /// Records direct pushes as (logger, tid, values) and routed ones as
    /// (u64::MAX, key, values).
    struct Recorder<'a>(&'a Seen);

    impl Deliver for Recorder<'_> {
        fn direct(&mut self, l: u64, t: u32, v: &[f64]) -> Result<(), Failure> {
            self.0.borrow_mut().push((l, t, v.to_vec()));
            Ok(())
        }
        fn routed(&mut self, key: u32, v: &[f64]) {
            self.0.borrow_mut().push((u64::MAX, key, v.to_vec()));
        }
    }

    struct Failing<F: FnMut() -> Result<(), Failure>>(F);

    impl<F: FnMut() -> Result<(), Failure>> Deliver for Failing<F> {
        fn direct(&mut self, _: u64, _: u32, _: &[f64]) -> Result<(), Failure> {
            (self.0)()
        }
        fn routed(&mut self, _: u32, _: &[f64]) {}
    }

    fn run(fx: &mut Fixture, seen: &Seen) -> Option<FakeError> {
        // SAFETY: the fixture owns a well-formed (or deliberately broken but
        // size-consistent) frame.
        take_error(unsafe { execute_with(fx.frame_ptr(), &mut Recorder(seen)) })
    }

    fn refused(fx: &mut Fixture) -> FakeError {
        let seen = Seen::default();
        let err = run(fx, &seen).expect("handler should refuse this call");
        assert!(seen.borrow().is_empty(), "nothing may be pushed on error");
        assert!(
            err.message.starts_with("nlsq ring-logger FFI handler: "),
            "{}",
            err.message
        );
        err
    }

    #[test]
    fn pushes_f64_values_with_ids() {
        let mut fx = Fixture::f64(&[3.0, 1.5, -2.0e-3]);
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        assert_eq!(*seen.borrow(), vec![(7, 3, vec![3.0, 1.5, -2.0e-3])]);
    }

    #[test]
    fn widens_f32_values() {
        let mut fx = Fixture::f32(&[1.25, f32::NAN, 7.0]);
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        let got = &seen.borrow()[0].2;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], 1.25);
        assert!(got[1].is_nan());
        assert_eq!(got[2], 7.0);
    }

    #[test]
    fn empty_buffer_is_a_constant_line() {
        let mut fx = Fixture::f64(&[]);
        fx.buffer().data = std::ptr::null_mut();
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        assert_eq!(*seen.borrow(), vec![(7, 3, vec![])]);
    }

    #[test]
    fn full_record_is_accepted_one_more_is_not() {
        use ringlog::MAX_VALUES;
        let vals: Vec<f64> = (0..MAX_VALUES).map(|i| i as f64).collect();
        let mut fx = Fixture::f64(&vals);
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        assert_eq!(seen.borrow()[0].2, vals);

        let vals: Vec<f64> = (0..=MAX_VALUES).map(|i| i as f64).collect();
        let err = refused(&mut Fixture::f64(&vals));
        assert_eq!(err.code, abi::ERROR_INVALID_ARGUMENT);
        assert!(err.message.contains("13 elements"), "{}", err.message);
    }

    #[test]
    fn wrong_dtype_is_named() {
        let mut fx = Fixture::f64(&[1.0]);
        fx.buffer().dtype = abi::DTYPE_S64;
        let err = refused(&mut fx);
        assert_eq!(err.code, abi::ERROR_INVALID_ARGUMENT);
        assert!(
            err.message
                .contains("dtype int64, expected float64 or float32"),
            "{}",
            err.message
        );
    }

    #[test]
    fn wrong_rank_is_named() {
        let mut fx = Fixture::f64(&[1.0, 2.0]);
        fx.buffer().rank = 2;
        assert!(refused(&mut fx).message.contains("rank 2"));
        fx.buffer().rank = 0;
        assert!(refused(&mut fx).message.contains("rank 0"));
    }

    #[test]
    fn negative_dim_is_refused() {
        let mut fx = Fixture::f64(&[1.0]);
        fx.dims()[0] = -1;
        assert!(refused(&mut fx).message.contains("-1 elements"));
    }

    #[test]
    fn small_structs_are_refused() {
        let mut fx = Fixture::f64(&[1.0]);
        fx.frame().struct_size = abi::CALL_FRAME_SIZE - 8;
        assert!(refused(&mut fx).message.contains("XLA_FFI_CallFrame is"));

        let mut fx = Fixture::f64(&[1.0]);
        fx.buffer().struct_size = 16;
        assert!(refused(&mut fx)
            .message
            .contains("XLA_FFI_Buffer is 16 bytes"));

        let mut fx = Fixture::f64(&[1.0]);
        fx.frame().attrs.struct_size = 8;
        assert!(refused(&mut fx)
            .message
            .contains("XLA_FFI_Attrs is 8 bytes"));
    }

    #[test]
    fn wrong_stage_is_refused() {
        let mut fx = Fixture::f64(&[1.0]);
        fx.frame().stage = 0;
        assert!(refused(&mut fx).message.contains("execution stage 0"));
    }

    #[test]
    fn argument_and_result_counts_are_checked() {
        let mut fx = Fixture::f64(&[1.0]);
        fx.frame().args.size = 2;
        assert!(refused(&mut fx).message.contains("exactly 1 argument"));

        let mut fx = Fixture::f64(&[1.0]);
        fx.set_arg_type(0, 2);
        assert!(refused(&mut fx).message.contains("expected a buffer"));

        let mut fx = Fixture::f64(&[1.0]);
        fx.frame().rets.size = 1;
        assert!(refused(&mut fx).message.contains("expected no results"));
    }

    #[test]
    fn attributes_are_checked_by_name_and_type() {
        let mut fx = Fixture::f64(&[1.0]);
        fx.scalar(1).dtype = 4; // S32
        let err = refused(&mut fx);
        assert!(
            err.message
                .contains("attribute `template_id` has dtype int32, expected int64"),
            "{}",
            err.message
        );

        let mut fx = Fixture::f64(&[1.0]);
        fx.set_attr_type(0, abi::ATTR_SCALAR + 1);
        assert!(refused(&mut fx)
            .message
            .contains("`logger_id` has attribute type 4"));

        let attrs = [("template_id", abi::DTYPE_S64, 1)];
        let mut fx = Fixture::raw(vec![0], abi::DTYPE_F64, 1, &attrs);
        assert!(refused(&mut fx)
            .message
            .contains("missing int64 attribute `logger_id`"));

        let attrs = [
            ("logger_id", abi::DTYPE_S64, 1),
            ("template", abi::DTYPE_S64, 1),
        ];
        let mut fx = Fixture::raw(vec![0], abi::DTYPE_F64, 1, &attrs);
        assert!(refused(&mut fx)
            .message
            .contains("unexpected attribute `template`"));

        let attrs = [
            ("logger_id", abi::DTYPE_S64, 1),
            ("template_id", abi::DTYPE_S64, 1 << 40),
        ];
        let mut fx = Fixture::raw(vec![0], abi::DTYPE_F64, 1, &attrs);
        assert!(refused(&mut fx).message.contains("outside 0..=4294967295"));

        let attrs = [
            ("logger_id", abi::DTYPE_S64, -5),
            ("template_id", abi::DTYPE_S64, 1),
        ];
        let mut fx = Fixture::raw(vec![0], abi::DTYPE_F64, 1, &attrs);
        assert!(refused(&mut fx)
            .message
            .contains("logger_id -5 is negative"));

        let attrs = [
            ("logger_id", abi::DTYPE_S64, 1),
            ("template_key", abi::DTYPE_S64, 1),
        ];
        let mut fx = Fixture::raw(vec![0], abi::DTYPE_F64, 1, &attrs);
        assert!(refused(&mut fx)
            .message
            .contains("either `logger_id` and `template_id`"));

        let attrs = [
            ("rows", abi::DTYPE_S64, 2),
            ("template_key", abi::DTYPE_S64, 1),
        ];
        let mut fx = Fixture::raw(vec![0], abi::DTYPE_F64, 1, &attrs);
        assert!(refused(&mut fx)
            .message
            .contains("rows must be 0 or 1, got 2"));
    }

    #[test]
    fn routed_record_goes_to_its_key() {
        let attrs = [("template_key", abi::DTYPE_S64, 5)];
        let words = [4.0f64, 0.25].iter().map(|v| v.to_bits()).collect();
        let mut fx = Fixture::raw(words, abi::DTYPE_F64, 2, &attrs);
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        assert_eq!(*seen.borrow(), vec![(u64::MAX, 5, vec![4.0, 0.25])]);
    }

    #[test]
    fn routed_rows_push_each_kept_row_without_its_flag() {
        // 3 rows of [keep, index, value]; the middle one is not kept.
        let rows = [1.0f32, 0.0, 10.0, 0.0, 1.0, 11.0, 1.0, 2.0, 12.0];
        let mut bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_ne_bytes()).collect();
        bytes.resize(40, 0);
        let words = bytes
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        let attrs = [
            ("rows", abi::DTYPE_S64, 1),
            ("template_key", abi::DTYPE_S64, 2),
        ];
        let mut fx = Fixture::raw(words, abi::DTYPE_F32, 3, &attrs);
        fx.buffer().rank = 2;
        fx.dims()[1] = 3;
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        assert_eq!(
            *seen.borrow(),
            vec![
                (u64::MAX, 2, vec![0.0, 10.0]),
                (u64::MAX, 2, vec![2.0, 12.0])
            ]
        );

        // rows = 1 with a rank-1 buffer is a rank error naming rows.
        fx.buffer().rank = 1;
        assert!(refused(&mut fx).message.contains("expected a rank-2 array"));
        // A row wider than a keep flag plus a full record is refused.
        fx.buffer().rank = 2;
        fx.dims()[1] = 14;
        assert!(refused(&mut fx).message.contains("3 x 14"));
        fx.dims()[1] = 0;
        assert!(refused(&mut fx).message.contains("no keep-flag column"));
    }

    #[test]
    fn delivery_failure_and_panic_become_errors() {
        let mut fx = Fixture::f64(&[1.0]);
        let mut sink = Failing(|| Err(Failure::invalid("no such template")));
        // SAFETY: well-formed fixture frame.
        let err = take_error(unsafe { execute_with(fx.frame_ptr(), &mut sink) }).unwrap();
        assert_eq!(err.code, abi::ERROR_INVALID_ARGUMENT);
        assert!(err.message.ends_with("no such template"));

        let mut sink = Failing(|| -> Result<(), Failure> { panic!("boom in delivery") });
        // SAFETY: as above.
        let err = take_error(unsafe { execute_with(fx.frame_ptr(), &mut sink) }).unwrap();
        assert_eq!(err.code, abi::ERROR_INTERNAL);
        assert!(err.message.contains("panicked: boom in delivery"));
    }

    #[test]
    fn unreportable_failures_return_null_and_are_counted() {
        let before = stats::snapshot().unreportable;
        // SAFETY: null is an allowed input.
        assert!(unsafe { cpu_handler(std::ptr::null_mut()) }.is_null());

        let mut fx = Fixture::f64(&[1.0]);
        fx.buffer().dtype = abi::DTYPE_S64;
        fx.api().error_create = None;
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        assert!(seen.borrow().is_empty());
        assert!(stats::snapshot().unreportable >= before + 2);
    }

    #[test]
    fn metadata_query_reports_version_and_no_traits() {
        // Heap-allocated and only reached through raw pointers, as XLA's
        // struct is, so the handler's writes are not aliased by a borrow.
        let meta = Box::into_raw(Box::new(abi::Metadata {
            struct_size: std::mem::size_of::<abi::Metadata>(),
            api_version: abi::ApiVersion {
                struct_size: 0,
                extension_start: std::ptr::null_mut(),
                major_version: -1,
                minor_version: -1,
            },
            traits: 0xdead,
            state_type_id: abi::TypeId { type_id: 99 },
        }));
        let ext = Box::into_raw(Box::new(abi::MetadataExtension {
            extension_base: abi::ExtensionBase {
                struct_size: abi::METADATA_EXTENSION_SIZE,
                kind: abi::EXTENSION_METADATA,
                next: std::ptr::null_mut(),
            },
            metadata: meta,
        }));
        // XLA sends the metadata query with no arguments and stage 0.
        let mut fx = Fixture::f64(&[]);
        fx.frame().args.size = 0;
        fx.frame().stage = 0;
        fx.frame().extension_start = ext.cast();
        let seen = Seen::default();
        assert!(run(&mut fx, &seen).is_none());
        assert!(seen.borrow().is_empty(), "a metadata query pushes nothing");
        // SAFETY: `meta` is live until the Box::from_raw below.
        unsafe {
            assert_eq!((*meta).api_version.major_version, abi::API_MAJOR);
            assert_eq!((*meta).api_version.minor_version, abi::API_MINOR);
            assert_eq!((*meta).api_version.struct_size, abi::API_VERSION_SIZE);
            assert_eq!((*meta).traits, 0);
            assert_eq!((*meta).state_type_id.type_id, 0);
            (*meta).struct_size = 8;
        }
        let err = refused(&mut fx);
        assert!(err.message.contains("XLA_FFI_Metadata is 8 bytes"));
        // SAFETY: both came from Box::into_raw above and are used no more.
        unsafe {
            drop(Box::from_raw(ext));
            drop(Box::from_raw(meta));
        }
    }
}
