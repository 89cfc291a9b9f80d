/// mimalloc (see `ztrace::alloc` for why and how it is tuned).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Options not at their defaults (a `MIMALLOC_*` setting) are the operator's choice.
    ztrace::app::alloc::tune();
    std::process::exit(ztrace::app::cli::main());
}
