//! Delivering one record to the ring logger named by its id.
//!
//! Invariant: a logger that is gone (closed, or replaced by `configure` while
//! a compiled function still carries its id) is not an error for the fit:
//! the record is counted as orphaned and the computation goes on. A template
//! the logger does not know, or a value count that does not match it, is a
//! programming error and is reported.
use ringlog::PushError;

use crate::error::Failure;
use crate::stats;

pub fn deliver(logger_id: u64, template_id: u32, values: &[f64]) -> Result<(), Failure> {
    let Some(logger) = ringlog::lookup(logger_id) else {
        stats::orphaned();
        return Ok(());
    };
    match logger.push_f64(template_id, values) {
        Ok(()) => Ok(()),
        Err(PushError::Closed) => {
            stats::orphaned();
            Ok(())
        }
        Err(PushError::UnknownTemplate(t)) => Err(Failure::invalid(format!(
            "template id {t} is not registered with logger {logger_id}"
        ))),
        Err(PushError::WrongArity { expected, got }) => Err(Failure::invalid(format!(
            "template {template_id} has {expected} fields but the packed values have {got}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use ringlog::{Config, Logger, MemorySink};

    use crate::abi;
    use crate::cpu_handler;
    use crate::stats;
    use crate::testing::{take_error, Fixture};

    fn call(values: &[f64], logger_id: u64, template_id: u32) -> Option<String> {
        let words = values.iter().map(|v| v.to_bits()).collect();
        let attrs = [
            ("logger_id", abi::DTYPE_S64, logger_id as i64),
            ("template_id", abi::DTYPE_S64, i64::from(template_id)),
        ];
        let mut fx = Fixture::raw(words, abi::DTYPE_F64, values.len(), &attrs);
        // SAFETY: well-formed fixture frame.
        take_error(unsafe { cpu_handler(fx.frame_ptr()) }).map(|e| e.message)
    }

    #[test]
    fn cpu_handler_writes_through_the_real_ring() {
        let sink = MemorySink::new();
        let logger = Logger::new(Box::new(sink.clone()), Config::default());
        let tid = logger.register("{i:>5d} {cost:.3f}").unwrap();
        for i in 0..3 {
            assert_eq!(
                call(&[f64::from(i), 0.5 * f64::from(i)], logger.id(), tid),
                None
            );
        }
        assert!(logger.flush(None));
        assert_eq!(sink.contents(), "    0 0.000\n    1 0.500\n    2 1.000\n");

        let err = call(&[1.0], logger.id(), tid).expect("arity mismatch is an error");
        assert!(
            err.contains("has 2 fields but the packed values have 1"),
            "{err}"
        );
        let err = call(&[1.0], logger.id(), tid + 100).expect("unknown template");
        assert!(err.contains("is not registered with logger"), "{err}");

        let before = stats::snapshot().orphaned;
        logger.close();
        assert_eq!(
            call(&[1.0, 2.0], logger.id(), tid),
            None,
            "a closed logger is not an error"
        );
        assert_eq!(call(&[1.0, 2.0], u64::MAX >> 1, tid), None);
        assert!(stats::snapshot().orphaned >= before + 2);
    }
}
