//! The bounds on one chat-template render: instructions run and text produced, and the
//! counters and output buffer that enforce the latter ([`crate::chat`] renders with them,
//! [`crate::pyfmt`] prints within them).

use std::sync::atomic::AtomicUsize;

/// Instructions one render may run (minijinja fuel). Real templates take 30–60 per message
/// (ChatML with tools, Llama 3, Mistral, Qwen3 thinking: measured), so this is ~40 000
/// messages; it stops endless or astronomically long loops
/// (`{% for i in range(100000) %}{% for j in range(100000) %}`) within a fraction of a second.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// The most text one render may produce: far beyond any conversation a model can take, so this
/// only stops a template from filling memory with output.
pub const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

pub(crate) fn too_much_output() -> String {
    format!("the template renders more than {} MiB of text; is it looping?", TEMPLATE_MAX_OUTPUT >> 20)
}

/// The bytes `{{ }}` printed in one render (a per-render object of minijinja's state).
#[derive(Debug, Default)]
pub(crate) struct Printed(pub(crate) AtomicUsize);

impl minijinja::value::Object for Printed {}

/// Render output that refuses to grow past [`TEMPLATE_MAX_OUTPUT`].
pub(crate) struct CappedOutput {
    pub(crate) text: Vec<u8>,
    pub(crate) exceeded: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output limit reached"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
