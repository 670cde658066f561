//! The processor's allocator: mimalloc (the binary installs it). The processor allocates about
//! 30 small strings and vectors an event, most of them freed a batch later, on which glibc's
//! allocator spent a quarter of its CPU (`docs/benchmarks.md`).

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 option enums; the crate
/// exposes no constant for it).
const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before it goes back to the OS. mimalloc's
/// default, a second, holds a batch's worth of freed rows while the next batch allocates its own:
/// 25–35 MB more peak RSS in `eye bench processor`; 100 ms keeps most of the CPU it saves.
pub const PURGE_DELAY_MS: i64 = 100;

/// Sets [`PURGE_DELAY_MS`]; call once at start, before other threads allocate.
#[allow(unsafe_code)]
pub fn return_freed_memory_sooner() {
    // SAFETY: setting an option is a plain store mimalloc reads on its next purge; the caller
    // makes it before other threads run (mimalloc's options are not synchronised).
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, PURGE_DELAY_MS as _) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_that_defaults_to_a_second() {
        // SAFETY: reads an option; the test binary sets none of mimalloc's options.
        let default = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY_OPTION) };
        assert_eq!(
            default, 1_000,
            "mimalloc v3's purge delay is 1,000 ms by default"
        );
    }
}
