//! Lifting what a guest hands the host without trusting its sizes.
//!
//! The canonical ABI copies every string a guest returns (or passes to a
//! host function) into host memory. A hostile guest can name one 16 MiB
//! buffer as the message of a thousand failures, or log a 60 MiB line a
//! hundred times a batch; copied whole, that is gigabytes of host memory for
//! a 64 MiB guest. Two bounds make that impossible:
//!
//! - every guest string is lifted as a [`GuestText`], which copies at most
//!   the current text cap (`limits.max_message_bytes`, set for the call with
//!   [`with_text_cap`]) and remembers how long the guest's string was, so
//!   the host can say it was cut or refuse it (an output name must fit);
//! - all that one call lifts (lists and the copied part of strings) is
//!   bounded by the store's hostcall fuel, which the runner sets to the
//!   guest's own memory limit: a guest can make the host copy at most its
//!   own memory's worth per call, however it aliases its buffers.
//!
//! The `process` and `init` exports are called through [`TypedFunc`]s with
//! these types instead of the bindings' `String`s.

// `Lift` is an unsafe trait: an implementation promises to read the guest's
// memory only through the bounds-checked `LiftContext`, which this one does
// (every index below is checked against `cx.memory().len()` first).
#![allow(unsafe_code)]

use super::sluice::transform::types::OutcomeKind;
use std::cell::Cell;
use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Func, Lift, TypedFunc};
use wasmtime::{Result, bail};

/// The largest text cap: no guest string is ever copied past this many bytes
/// (`limits.max_message_bytes` may be set lower, never higher).
pub const MAX_TEXT_BYTES: usize = 64 << 10;

thread_local! {
    static TEXT_CAP: Cell<usize> = const { Cell::new(MAX_TEXT_BYTES) };
}

/// Runs `f` (a call into a guest) with guest strings copied up to `cap`
/// bytes each (at most [`MAX_TEXT_BYTES`]).
pub(crate) fn with_text_cap<R>(cap: usize, f: impl FnOnce() -> R) -> R {
    let previous = TEXT_CAP.with(|c| c.replace(cap.min(MAX_TEXT_BYTES)));
    let result = f();
    TEXT_CAP.with(|c| c.set(previous));
    result
}

const UTF16_TAG: usize = 1 << 31;

/// A string from a guest: at most the text cap of it, cut at a character
/// boundary, and the length the guest gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestText {
    /// The copied text.
    pub text: String,
    /// The string's length in the guest, in bytes of its encoding.
    pub guest_len: usize,
    /// Whether `text` is only the start of the guest's string.
    pub cut: bool,
}

impl GuestText {
    /// The text, with a note of how long it was when it was cut.
    pub fn into_message(self) -> String {
        if self.cut {
            format!(
                "{}… (cut: {} bytes in all)",
                self.text.trim_end(),
                self.guest_len
            )
        } else {
            self.text
        }
    }
}

impl From<&str> for GuestText {
    fn from(s: &str) -> Self {
        GuestText {
            text: s.to_string(),
            guest_len: s.len(),
            cut: false,
        }
    }
}

fn lift_text(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> Result<GuestText> {
    let encoding = cx.options().string_encoding;
    let (byte_len, align) = match encoding {
        StringEncoding::Utf8 => (Some(len), 1usize),
        StringEncoding::Utf16 => (len.checked_mul(2), 2),
        StringEncoding::CompactUtf16 if len & UTF16_TAG == 0 => (Some(len), 2),
        StringEncoding::CompactUtf16 => ((len ^ UTF16_TAG).checked_mul(2), 2),
    };
    if !ptr.is_multiple_of(align) {
        bail!("string pointer not aligned to {align}");
    }
    let memory = cx.memory();
    let Some(byte_len) =
        byte_len.filter(|&n| ptr.checked_add(n).is_some_and(|end| end <= memory.len()))
    else {
        bail!("string pointer/length out of bounds of memory");
    };
    let cap = TEXT_CAP.with(Cell::get);
    let take = byte_len.min(cap);
    cx.consume_fuel(take)?;
    let bytes = &memory[ptr..ptr + take];
    let cut = take < byte_len;
    let text = match encoding {
        StringEncoding::Utf8 => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            // Cut inside a character: keep what is whole.
            Err(e) if cut && e.error_len().is_none() => {
                String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
            }
            Err(e) => bail!("a string is not valid UTF-8: {e}"),
        },
        StringEncoding::CompactUtf16 if len & UTF16_TAG == 0 => {
            bytes.iter().map(|&b| char::from(b)).collect()
        }
        StringEncoding::Utf16 | StringEncoding::CompactUtf16 => {
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]));
            let mut text = String::with_capacity(take);
            for (i, ch) in char::decode_utf16(units).enumerate() {
                match ch {
                    Ok(ch) => text.push(ch),
                    // A surrogate pair cut in half at the end.
                    Err(_) if cut && i + 1 == take / 2 => break,
                    Err(e) => bail!("a string is not valid UTF-16: {e}"),
                }
            }
            text
        }
    };
    Ok(GuestText {
        text,
        guest_len: byte_len,
        cut,
    })
}

// SAFETY: the same layout as `str` (a pointer and a length), which is what
// the component's `string` type is checked against.
unsafe impl ComponentType for GuestText {
    type Lower = <str as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> Result<()> {
        <str as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads guest memory only through `cx.memory()`, after checking the
// span against its length.
unsafe impl Lift for GuestText {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        src: &Self::Lower,
    ) -> Result<Self> {
        let ptr = usize::try_from(src[0].get_u32())?;
        let len = usize::try_from(src[1].get_u32())?;
        lift_text(cx, ptr, len)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        bytes: &[u8],
    ) -> Result<Self> {
        let word = |at: usize| -> Result<usize> {
            match bytes.get(at..at + 4) {
                Some(b) => Ok(usize::try_from(u32::from_le_bytes([
                    b[0], b[1], b[2], b[3],
                ]))?),
                None => bail!("a string's pointer and length are outside memory"),
            }
        };
        lift_text(cx, word(0)?, word(4)?)
    }
}

/// `failure` of the contract, with bounded strings.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(record)]
pub(crate) struct RawFailure {
    pub kind: GuestText,
    pub message: GuestText,
}

/// `outcomes` of the contract, with bounded strings.
#[derive(ComponentType, Lift, Debug, Clone)]
#[component(record)]
pub(crate) struct RawOutcomes {
    pub kinds: Vec<OutcomeKind>,
    #[component(name = "output-ends")]
    pub output_ends: Vec<u32>,
    pub failures: Vec<RawFailure>,
    #[component(name = "output-names")]
    pub output_names: Vec<GuestText>,
    pub arena: Vec<u8>,
    pub spans: Vec<u32>,
    pub timestamps: Vec<i64>,
    #[component(name = "header-ends")]
    pub header_ends: Vec<u32>,
    #[component(name = "header-spans")]
    pub header_spans: Vec<u32>,
    #[component(name = "output-index")]
    pub output_index: Vec<u32>,
}

type WireBatch = super::sluice::transform::types::Batch;
type ProcessFunc<'a> = TypedFunc<(&'a WireBatch,), (Result<RawOutcomes, GuestText>,)>;
type InitFunc<'a> = TypedFunc<(&'a str,), (Result<(), GuestText>,)>;

/// The `init` and `process` exports of one instance, type-checked once.
#[derive(Clone, Copy)]
pub(crate) struct Exports {
    init: Func,
    process: Func,
}

impl Exports {
    /// Looks the exports up and checks their types against the contract.
    pub(crate) fn new(
        store: &mut wasmtime::Store<super::host_api::HostState>,
        instance: &wasmtime::component::Instance,
    ) -> Result<Self> {
        let Some(init) = instance.get_func(&mut *store, "init") else {
            bail!("the component exports no `init`");
        };
        let Some(process) = instance.get_func(&mut *store, "process") else {
            bail!("the component exports no `process`");
        };
        init.typed::<(&str,), (Result<(), GuestText>,)>(&*store)?;
        process.typed::<(&WireBatch,), (Result<RawOutcomes, GuestText>,)>(&*store)?;
        Ok(Exports { init, process })
    }

    /// Calls `init`.
    pub(crate) fn init(
        &self,
        store: &mut wasmtime::Store<super::host_api::HostState>,
        config: &str,
    ) -> Result<Result<(), GuestText>> {
        // SAFETY: the type was checked in `new` for this very function.
        let f: InitFunc<'_> = unsafe { TypedFunc::new_unchecked(self.init) };
        Ok(f.call(store, (config,))?.0)
    }

    /// Calls `process`.
    pub(crate) fn process(
        &self,
        store: &mut wasmtime::Store<super::host_api::HostState>,
        batch: &WireBatch,
    ) -> Result<Result<RawOutcomes, GuestText>> {
        // SAFETY: the type was checked in `new` for this very function.
        let f: ProcessFunc<'_> = unsafe { TypedFunc::new_unchecked(self.process) };
        Ok(f.call(store, (batch,))?.0)
    }
}
