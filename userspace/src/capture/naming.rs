//! The service name a process would be given by the people who run it, read from its command
//! line: for an interpreter, the program it runs (`python3 -m app.main` → `app.main`,
//! `node server/pricing.js` → `pricing`, `java -jar orders-2.1.jar` → `orders`), not the
//! interpreter's own name. Also the runtime's name and version, where the executable's path or
//! the runtime's own files tell them without running anything.
//!
//! Pure functions over what /proc says, so every rule has a unit test; `process::info` calls them.

use std::path::Path;

/// A language runtime whose command line names the program it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpreter {
    Python,
    Node,
    Java,
    Ruby,
    Php,
}

impl Interpreter {
    /// Recognises an interpreter by its executable's file name (`python3.11`, `nodejs`, `java`).
    pub fn from_executable(name: &str) -> Option<Self> {
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        match base {
            "python" | "pypy" => Some(Interpreter::Python),
            "node" | "nodejs" => Some(Interpreter::Node),
            "java" => Some(Interpreter::Java),
            "ruby" => Some(Interpreter::Ruby),
            "php" | "php-cgi" => Some(Interpreter::Php),
            _ => None,
        }
    }

    /// `process.runtime.name` as the semantic conventions' examples spell it.
    pub fn runtime_name(self, executable: &str) -> &'static str {
        match self {
            Interpreter::Python if executable.starts_with("pypy") => "PyPy",
            Interpreter::Python => "CPython",
            Interpreter::Node => "nodejs",
            Interpreter::Java => "OpenJDK Runtime Environment",
            Interpreter::Ruby => "ruby",
            Interpreter::Php => "php",
        }
    }

    /// Options that take the next argument as their value (`-W default`, `-cp lib.jar`).
    fn takes_value(self, opt: &str) -> bool {
        match self {
            Interpreter::Python => matches!(opt, "-W" | "-X" | "--check-hash-based-pycs"),
            Interpreter::Node => matches!(
                opt,
                "-r" | "--require"
                    | "--import"
                    | "--loader"
                    | "--experimental-loader"
                    | "--conditions"
                    | "-C"
                    | "--env-file"
                    | "--title"
                    | "--stack-size"
                    | "--max-old-space-size"
            ),
            Interpreter::Java => matches!(
                opt,
                "-cp"
                    | "-classpath"
                    | "--class-path"
                    | "-p"
                    | "--module-path"
                    | "--upgrade-module-path"
                    | "--add-modules"
                    | "--add-opens"
                    | "--add-exports"
                    | "--add-reads"
                    | "--limit-modules"
                    | "--patch-module"
                    | "--enable-native-access"
            ),
            Interpreter::Ruby => matches!(opt, "-I" | "-r" | "-C" | "-E" | "-F" | "-0"),
            Interpreter::Php => matches!(opt, "-c" | "-d" | "-z"),
        }
    }
}

/// The name of the program an interpreter runs, from its arguments (`args[0]` is the
/// interpreter). None when it runs inline code (`python3 -c …`, `node -e …`) or nothing.
pub fn program_name(interp: Interpreter, args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let a = arg.as_str();
        match (interp, a) {
            (_, "--") => return it.next().and_then(|p| script_name(p)),
            (Interpreter::Python, "-c")
            | (Interpreter::Node, "-e" | "--eval" | "-p" | "--print")
            | (Interpreter::Ruby, "-e")
            | (Interpreter::Php, "-r") => return None,
            (Interpreter::Python, "-m") => return it.next().map(|m| module_name(m)),
            (Interpreter::Java, "-jar") => return it.next().and_then(|j| jar_name(j)),
            (Interpreter::Java, "-m" | "--module") => {
                // `module/main.Class`: the module names the service.
                return it
                    .next()
                    .map(|m| m.split('/').next().unwrap_or(m).to_string());
            }
            (Interpreter::Php, "-f") => return it.next().and_then(|p| script_name(p)),
            _ => {}
        }
        if let Some(opt) = a.strip_prefix('-').filter(|o| !o.is_empty()) {
            // Python bundles flags: `-um app` is `-u -m app`, `-uc code` runs inline code.
            if interp == Interpreter::Python && !a.starts_with("--") {
                if opt.ends_with('m') {
                    return it.next().map(|m| module_name(m));
                }
                if opt.ends_with('c') {
                    return None;
                }
            }
            if interp.takes_value(a) {
                it.next();
            }
            continue;
        }
        return match interp {
            // `java Orders.java` runs a source file (JEP 330); anything else names a main class.
            Interpreter::Java if !a.ends_with(".java") => Some(class_name(a)),
            _ => script_name(a),
        };
    }
    None
}

/// `app.main` stays as written: a module path is what Python users call their service.
fn module_name(m: &str) -> String {
    m.to_string()
}

/// `server/pricing.js` → `pricing`; a generic file name (`main.py`, `index.js`, `__main__.py`)
/// is named by its folder (`/srv/cart/index.js` → `cart`) when the path has one.
fn script_name(path: &str) -> Option<String> {
    let p = Path::new(path);
    let stem = p.file_stem()?.to_str()?;
    const GENERIC: [&str; 6] = ["main", "__main__", "index", "app", "server", "run"];
    if GENERIC.contains(&stem)
        && let Some(dir) = p
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|d| d.to_str())
        && !matches!(dir, "src" | "bin" | "lib" | "dist" | "build" | "app" | "")
    {
        return Some(dir.to_string());
    }
    (!stem.is_empty()).then(|| stem.to_string())
}

/// `/opt/orders-2.1.0-SNAPSHOT.jar` → `orders`: the version suffix is not part of the name.
fn jar_name(path: &str) -> Option<String> {
    let stem = Path::new(path).file_stem()?.to_str()?;
    let cut = stem
        .char_indices()
        .find(|&(i, c)| {
            c == '-' && stem[i + 1..].starts_with(|d: char| d.is_ascii_digit()) && i > 0
        })
        .map(|(i, _)| i)
        .unwrap_or(stem.len());
    Some(stem[..cut].to_string())
}

/// `com.example.orders.OrdersApp` → `OrdersApp`.
fn class_name(class: &str) -> String {
    class.rsplit('.').next().unwrap_or(class).to_string()
}

/// The runtime version, where a file tells it: the version suffix of the executable's resolved
/// name (`python3.11`, `ruby3.1`, `php8.2`), or a JDK's `release` file next to `bin/java`.
pub fn runtime_version(interp: Interpreter, executable_path: &str) -> Option<String> {
    let path = Path::new(executable_path);
    if interp == Interpreter::Java {
        let release = path.parent()?.parent()?.join("release");
        let text = std::fs::read_to_string(release).ok()?;
        return java_release_version(&text);
    }
    let name = path.file_name()?.to_str()?;
    let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
    (digits.contains('.') && digits.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .then(|| digits.to_string())
}

/// `JAVA_VERSION="17.0.15"` from a JDK's `release` file.
fn java_release_version(release: &str) -> Option<String> {
    release.lines().find_map(|l| {
        let v = l.strip_prefix("JAVA_VERSION=")?.trim().trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(args: &str) -> Option<String> {
        let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        let exe = Path::new(&args[0]).file_name().unwrap().to_str().unwrap();
        program_name(Interpreter::from_executable(exe).unwrap(), &args)
    }

    #[test]
    fn recognises_interpreters_by_executable_name() {
        assert_eq!(
            Interpreter::from_executable("python3.11"),
            Some(Interpreter::Python)
        );
        assert_eq!(
            Interpreter::from_executable("nodejs"),
            Some(Interpreter::Node)
        );
        assert_eq!(
            Interpreter::from_executable("java"),
            Some(Interpreter::Java)
        );
        assert_eq!(
            Interpreter::from_executable("ruby3.1"),
            Some(Interpreter::Ruby)
        );
        assert_eq!(
            Interpreter::from_executable("php8.2"),
            Some(Interpreter::Php)
        );
        assert_eq!(Interpreter::from_executable("nginx"), None);
        assert_eq!(Interpreter::from_executable("python-config"), None);
    }

    #[test]
    fn python_module_script_and_inline_code() {
        assert_eq!(name("python3 -m app.main").as_deref(), Some("app.main"));
        assert_eq!(
            name("python3 -u -m app.main --port 80").as_deref(),
            Some("app.main")
        );
        assert_eq!(name("python3 -um worker").as_deref(), Some("worker"));
        assert_eq!(
            name("python3 -W ignore svc/orders.py").as_deref(),
            Some("orders")
        );
        assert_eq!(
            name("python3 -X dev /srv/cart/main.py").as_deref(),
            Some("cart")
        );
        assert_eq!(name("python3 src/main.py").as_deref(), Some("main"));
        assert_eq!(name("python3 -c print(1)"), None);
        assert_eq!(name("python3 -uc print(1)"), None);
        assert_eq!(name("python3"), None);
    }

    #[test]
    fn node_script_and_eval() {
        assert_eq!(name("node server/pricing.js").as_deref(), Some("pricing"));
        assert_eq!(
            name("node --require ./otel.js --inspect=0 dist/index.js").as_deref(),
            Some("index")
        );
        assert_eq!(name("node /srv/cart/index.mjs").as_deref(), Some("cart"));
        assert_eq!(name("node -e 1"), None);
        assert_eq!(name("node -- gateway.js").as_deref(), Some("gateway"));
    }

    #[test]
    fn java_jar_module_and_class() {
        assert_eq!(name("java -jar orders.jar").as_deref(), Some("orders"));
        assert_eq!(
            name("java -Xmx1g -jar /opt/orders-2.1.0-SNAPSHOT.jar").as_deref(),
            Some("orders")
        );
        assert_eq!(
            name("java -cp a.jar:b.jar com.example.billing.BillingApp").as_deref(),
            Some("BillingApp")
        );
        assert_eq!(
            name("java --module-path mods -m shop.api/shop.api.Main").as_deref(),
            Some("shop.api")
        );
        assert_eq!(name("java -jar a-b-c.jar").as_deref(), Some("a-b-c"));
        assert_eq!(
            name("java apps/EvalFanout.java 80").as_deref(),
            Some("EvalFanout")
        );
        assert_eq!(name("java -version"), None);
    }

    #[test]
    fn ruby_and_php() {
        assert_eq!(name("ruby -I lib bin/sidekiq").as_deref(), Some("sidekiq"));
        assert_eq!(name("ruby -e 1"), None);
        assert_eq!(
            name("php -d memory_limit=1G worker.php").as_deref(),
            Some("worker")
        );
        assert_eq!(
            name("php -f /var/www/queue/run.php").as_deref(),
            Some("queue")
        );
        assert_eq!(name("php -r echo"), None);
    }

    #[test]
    fn runtime_versions_from_files() {
        assert_eq!(
            runtime_version(Interpreter::Python, "/usr/bin/python3.11").as_deref(),
            Some("3.11")
        );
        assert_eq!(runtime_version(Interpreter::Node, "/usr/bin/node"), None);
        assert_eq!(
            java_release_version("IMPLEMENTOR=\"Debian\"\nJAVA_VERSION=\"17.0.15\"\n").as_deref(),
            Some("17.0.15")
        );
        // A real JDK on this machine, when one is installed, says its version in `release`.
        if let Ok(java) = std::fs::canonicalize("/usr/bin/java") {
            let v = runtime_version(Interpreter::Java, java.to_str().unwrap());
            assert!(v.is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())));
        }
    }
}
