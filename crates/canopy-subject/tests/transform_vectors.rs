//! Differential test against nats-server's own transform code.
//!
//! `tests/data/transform_vectors.tsv` holds random cases (mapping source, destination and a
//! subject) with the result nats-server 2.11's `subject_transform.go` and `ValidateMapping`
//! gave for them (see the file's header for how it was made). Each case is re-run here and
//! must give the same text: the transformed subject, or the same error message.
//!
//! Set `CANOPY_TRANSFORM_VECTORS=/path/file.tsv` to check a larger file of the same format.

use canopy_subject::{validate_mapping, Transform, TransformError};

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn result<T: AsRef<str>>(r: Result<T, TransformError>) -> String {
    match r {
        Ok(s) => format!("OK {}", s.as_ref()),
        Err(TransformError::NotCharBoundary { .. }) => "NONUTF8".to_string(),
        Err(e) => format!("ERR {e}"),
    }
}

/// Our answer for one case, in the format the Go harness prints.
fn ours(mode: &str, src: &str, dest: &str, subject: &str) -> String {
    if mode == "validate" {
        return match validate_mapping(src, dest) {
            Ok(()) => "OK".to_string(),
            Err(e) => format!("ERR {e}"),
        };
    }
    let tr = match Transform::with_strict(src, dest, mode == "strict") {
        Ok(t) => t,
        Err(e) => return format!("ERR {e}"),
    };
    if dest.is_empty() {
        // nats-server returns no transform at all.
        return "NIL".to_string();
    }
    match mode {
        "match" | "strict" => result(tr.apply(subject)),
        "transform" => result(tr.transform(subject)),
        "reverse" => {
            let Some(r) = tr.reverse() else {
                return "NIL".to_string();
            };
            match tr.apply(subject) {
                Err(e) => format!("OK {} ERR {e}", r.source()),
                Ok(t) => match r.transform(&t) {
                    Ok(back) => format!("OK {} {t} {back}", r.source()),
                    Err(e) => format!("OK {} {t} ERR {e}", r.source()),
                },
            }
        }
        other => panic!("unknown mode {other:?}"),
    }
}

fn check(text: &str, name: &str) {
    let (mut checked, mut skipped) = (0usize, 0usize);
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "{name}:{}: malformed line", n + 1);
        let (src, dest, subject) = (unescape(f[1]), unescape(f[2]), unescape(f[3]));
        let expected = unescape(f[4]);
        let got = ours(f[0], &src, &dest, &subject);
        if expected == "PANIC" {
            // nats-server panics (partition(0, ...), a function reading a missing token);
            // we only need not to.
            skipped += 1;
            continue;
        }
        checked += 1;
        if got != expected {
            failures.push(format!(
                "{name}:{}: {} {src:?} -> {dest:?} on {subject:?}\n   nats-server: {expected}\n   canopy:      {got}",
                n + 1,
                f[0]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ ({skipped} skipped):\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(checked > 0, "{name}: no cases");
}

#[test]
fn agrees_with_nats_server() {
    check(
        include_str!("data/transform_vectors.tsv"),
        "transform_vectors.tsv",
    );
}

#[test]
fn agrees_with_nats_server_extra_file() {
    if let Ok(path) = std::env::var("CANOPY_TRANSFORM_VECTORS") {
        let text = std::fs::read_to_string(&path).expect("read CANOPY_TRANSFORM_VECTORS");
        check(&text, &path);
    }
}
