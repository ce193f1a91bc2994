fn main() {
    eprintln!("ballast-jepsen: not yet wired");
    std::process::exit(2);
}
