//! The PDF renderer child on its own (this crate's tests start it; the `ocrfleet` binary runs
//! the same code as `ocrfleet pdf-child`).

fn main() {
    std::process::exit(ocrfleet_pdf::child_main(std::env::args_os().skip(1)));
}
