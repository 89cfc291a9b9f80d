fn main() {
    std::process::exit(ztrace::cli::main());
}
