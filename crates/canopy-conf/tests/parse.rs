//! The configuration language: syntax forms, positions, variables, includes, errors.

#![allow(clippy::unwrap_used)]

use canopy_conf::{parse_file, parse_str, Kind, Map, Value};

fn p(src: &str) -> Map {
    parse_str(src, "test.conf").unwrap_or_else(|e| panic!("{e}\n---\n{src}"))
}

fn perr(src: &str) -> String {
    match parse_str(src, "test.conf") {
        Ok(m) => panic!("expected an error, got {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn get<'a>(m: &'a Map, path: &str) -> &'a Value {
    let mut cur = m;
    let parts: Vec<&str> = path.split('/').collect();
    for (i, k) in parts.iter().enumerate() {
        let v = cur
            .get(k)
            .unwrap_or_else(|| panic!("missing {k} in {path}"));
        if i == parts.len() - 1 {
            return v;
        }
        cur = v.as_map().unwrap();
    }
    unreachable!()
}

fn s(m: &Map, path: &str) -> String {
    get(m, path).as_str().unwrap().to_string()
}

fn i(m: &Map, path: &str) -> i64 {
    get(m, path).as_i64().unwrap()
}

#[test]
fn separators() {
    let m = p("a: 1\nb = 2\nc 3\nd:4\ne=5\n  f   :   6  \n");
    for (k, v) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("f", 6)] {
        assert_eq!(i(&m, k), v, "{k}");
    }
}

#[test]
fn terminators_and_comments() {
    let m = p("a: 1; b: 2, c: 3 # trailing\n// line comment\n# hash comment\nd: \"x\" // c\n");
    assert_eq!(i(&m, "a"), 1);
    assert_eq!(i(&m, "b"), 2);
    assert_eq!(i(&m, "c"), 3);
    assert_eq!(s(&m, "d"), "x");
}

#[test]
fn keys_case_insensitive_lookup_but_preserved() {
    let m = p("Port: 4222\nUS_WEST: {}");
    assert_eq!(i(&m, "port"), 4222);
    assert_eq!(m.entries[1].key, "US_WEST");
}

#[test]
fn maps_arrays_and_braces_on_next_line() {
    let src = r#"
cluster
{
  name: c1
  routes = [
    nats-route://h1:6222
    nats-route://h2:6222, "nats-route://h3:6222"
  ]
}
leafnodes { remotes: [ {url: "nats-leaf://a:7422"}, {urls: [x, y]} ] }
inline: {a: 1, b: [1, 2, 3], c: {d: true}}
empty_map {}
empty_arr []
"#;
    let m = p(src);
    assert_eq!(s(&m, "cluster/name"), "c1");
    let routes = get(&m, "cluster/routes").as_array().unwrap();
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0].as_str(), Some("nats-route://h1:6222"));
    assert_eq!(routes[2].as_str(), Some("nats-route://h3:6222"));
    let remotes = get(&m, "leafnodes/remotes").as_array().unwrap();
    assert_eq!(remotes.len(), 2);
    assert_eq!(get(&m, "inline/c/d").as_bool(), Some(true));
    assert_eq!(get(&m, "inline/b").as_array().unwrap().len(), 3);
    assert!(get(&m, "empty_map").as_map().unwrap().is_empty());
    assert!(get(&m, "empty_arr").as_array().unwrap().is_empty());
}

#[test]
fn top_level_braces_and_json() {
    let m = p("{\n port: 4222\n}\n");
    assert_eq!(i(&m, "port"), 4222);
    let m =
        p(r#"{"port": 4567, "jetstream": {"max_mem": 1024, "enabled": true}, "tags": ["a","b"]}"#);
    assert_eq!(i(&m, "port"), 4567);
    assert_eq!(i(&m, "jetstream/max_mem"), 1024);
    assert_eq!(get(&m, "tags").as_array().unwrap().len(), 2);
}

#[test]
fn strings() {
    let m = p(concat!(
        "a: \"tab\\there \\\"q\\\" \\\\ \\u00e9 \\U0001F600\"\n",
        "b: 'raw \\n $x'\n",
        "c: nats://user:pass@127.0.0.1:4222\n",
        "d: 127.0.0.1:4222\n",
        "e: 10s\n",
        "f: $2a$11$PWIFAL8RsWyGI3jVZtO9Nu8.6jOxzxfZo7c/W0eLk017hjgUKWrhy\n",
        "g: \"\"\n",
        "h: foo.*.>\n",
    ));
    assert_eq!(s(&m, "a"), "tab\there \"q\" \\ é 😀");
    assert_eq!(s(&m, "b"), "raw \\n $x");
    assert_eq!(s(&m, "c"), "nats://user:pass@127.0.0.1:4222");
    assert_eq!(s(&m, "d"), "127.0.0.1:4222");
    assert_eq!(s(&m, "e"), "10s");
    assert!(s(&m, "f").starts_with("$2a$11$PWIF"));
    assert_eq!(s(&m, "g"), "");
    assert_eq!(s(&m, "h"), "foo.*.>");
}

#[test]
fn scalars() {
    let m = p("a: 64MB\nb: 1k\nc: -1\nd: 1.5\ne: yes\nf: OFF\ng: 2024-01-02T03:04:05Z\nh: 2GiB\n");
    assert_eq!(i(&m, "a"), 64 * 1024 * 1024);
    assert_eq!(i(&m, "b"), 1000);
    assert_eq!(i(&m, "c"), -1);
    assert_eq!(get(&m, "d").kind, Kind::Float(1.5));
    assert_eq!(get(&m, "e").as_bool(), Some(true));
    assert_eq!(get(&m, "f").as_bool(), Some(false));
    assert!(matches!(get(&m, "g").kind, Kind::Datetime(_)));
    assert_eq!(i(&m, "h"), 2 << 30);
    // quoted booleans and numbers stay strings
    let m = p("a: \"true\"\nb: \"42\"");
    assert_eq!(s(&m, "a"), "true");
    assert_eq!(s(&m, "b"), "42");
}

#[test]
fn raw_block() {
    let m = p("a: (\n  line one\n  line (two)\n)\nb: 1\n");
    assert_eq!(s(&m, "a"), "  line one\n  line (two)");
    assert_eq!(i(&m, "b"), 1);
}

#[test]
fn positions() {
    let m = p("\n\n  port: 4222\nx {\n    y: \"z\"\n}\n");
    let e = m.entry("port").unwrap();
    assert_eq!((e.key_pos.line, e.key_pos.col), (3, 3));
    assert_eq!((e.value.pos.line, e.value.pos.col), (3, 9));
    let y = get(&m, "x/y");
    assert_eq!((y.pos.line, y.pos.col), (5, 8));
    assert_eq!(&*y.pos.file, "test.conf");
}

#[test]
fn error_positions() {
    let e = perr("a: 1\nb: \"unterminated\n");
    assert!(e.starts_with("test.conf:2:4: "), "{e}");
    assert!(e.contains("Parse error"), "{e}");
    let e = perr("a {\n b: 1\n");
    assert!(
        e.contains("test.conf:3:1") && e.contains("expected '}'"),
        "{e}"
    );
    let e = perr("a: [1, 2\n");
    assert!(e.contains("expected ']'"), "{e}");
    let e = perr("a: 1 2\n");
    assert!(e.starts_with("test.conf:1:6:"), "{e}");
    let e = perr("key\n");
    assert!(
        e.starts_with("test.conf:1:1:") && e.contains("expected a value"),
        "{e}"
    );
    let e = perr("}");
    assert!(e.starts_with("test.conf:1:1:"), "{e}");
    let e = perr("a: \"\\q\"");
    assert!(e.contains("invalid escape"), "{e}");
    let e = perr("a: 99999999999999999999");
    assert!(e.contains("out of range"), "{e}");
    let e = perr("{ a: 1 } b");
    assert!(e.contains("after the closing"), "{e}");
}

#[test]
fn variables_from_scopes() {
    let src = r#"
NAME = "srv-1"
perms = { publish: "a.>" }
server_name: $NAME
authorization {
  TIMEOUT: 3
  timeout: $TIMEOUT
  users: [ { user: u, permissions: $perms } ]
}
"#;
    let m = p(src);
    assert_eq!(s(&m, "server_name"), "srv-1");
    assert_eq!(i(&m, "authorization/timeout"), 3);
    let users = get(&m, "authorization/users").as_array().unwrap();
    let perms = users[0].as_map().unwrap().get("permissions").unwrap();
    assert_eq!(
        perms.as_map().unwrap().get("publish").unwrap().as_str(),
        Some("a.>")
    );
    // Definitions that were referenced are marked so options skip them.
    assert!(m.entry("NAME").unwrap().used_as_variable);
    assert!(m.entry("perms").unwrap().used_as_variable);
    assert!(!m.entry("server_name").unwrap().used_as_variable);
    // The reference position is the `$` of the use.
    let v = get(&m, "server_name");
    assert_eq!((v.pos.line, v.pos.col), (4, 14));
}

#[test]
fn variables_missing() {
    let e = perr("a: 1\nb: $CANOPY_TEST_SURELY_UNDEFINED_VAR\n");
    assert!(
        e.contains(
            "variable reference for 'CANOPY_TEST_SURELY_UNDEFINED_VAR' on line 2 can not be found"
        ),
        "{e}"
    );
    // $2b$ is not special-cased, like nats-server.
    let e = perr("p: $2b$11$abc\n");
    assert!(e.contains("variable reference"), "{e}");
    // A variable defined later is not visible.
    let e = perr("a: $b\nb: 1\n");
    assert!(e.contains("can not be found"), "{e}");
}

#[test]
fn variables_from_environment() {
    // Unique names: tests run in parallel threads of one process.
    std::env::set_var("CANOPY_T_ENV_NAME", "from_env");
    std::env::set_var("CANOPY_T_ENV_PORT", "4333");
    std::env::set_var("CANOPY_T_ENV_SIZE", "2MB");
    std::env::set_var("CANOPY_T_ENV_LIST", "[a, b]");
    std::env::set_var("CANOPY_T_ENV_CHAIN", "$CANOPY_T_ENV_PORT");
    std::env::set_var("CANOPY_T_ENV_WORDS", "hello world");
    let m = p(concat!(
        "server_name: $CANOPY_T_ENV_NAME\nport: $CANOPY_T_ENV_PORT\nmax: $CANOPY_T_ENV_SIZE\n",
        "l: $CANOPY_T_ENV_LIST\nc: $CANOPY_T_ENV_CHAIN\nw: $CANOPY_T_ENV_WORDS\n"
    ));
    assert_eq!(s(&m, "server_name"), "from_env");
    assert_eq!(i(&m, "port"), 4333);
    assert_eq!(i(&m, "max"), 2 * 1024 * 1024);
    assert_eq!(get(&m, "l").as_array().unwrap().len(), 2);
    assert_eq!(i(&m, "c"), 4333);
    assert_eq!(s(&m, "w"), "hello world");
    // Local definitions win over the environment.
    let m = p("CANOPY_T_ENV_NAME: local\nx: $CANOPY_T_ENV_NAME");
    assert_eq!(s(&m, "x"), "local");
}

#[test]
fn variable_cycles_through_environment() {
    std::env::set_var("CANOPY_T_CYC_A", "$CANOPY_T_CYC_B");
    std::env::set_var("CANOPY_T_CYC_B", "$CANOPY_T_CYC_A");
    std::env::set_var("CANOPY_T_CYC_SELF", "$CANOPY_T_CYC_SELF");
    let e = perr("a: $CANOPY_T_CYC_A");
    assert!(e.contains("cycle"), "{e}");
    let e = perr("a: $CANOPY_T_CYC_SELF");
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn includes() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("auth.conf"),
        "authorization { user: a, password: b }\nINNER = 7\n",
    )
    .unwrap();
    std::fs::write(sub.join("nested.conf"), "include 'auth.conf'\nport: 5\n").unwrap();
    std::fs::write(
        dir.path().join("main.conf"),
        "port: 1\ninclude ./sub/nested.conf\nhttp_port: $INNER\nleafnodes {\n  include \"sub/leaf.conf\"\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("sub/leaf.conf"), "port: 7422").unwrap();
    let m = parse_file(&dir.path().join("main.conf")).unwrap();
    assert_eq!(i(&m, "port"), 5, "included value replaces the earlier one");
    assert_eq!(s(&m, "authorization/user"), "a");
    assert_eq!(
        i(&m, "http_port"),
        7,
        "parent sees the included definitions"
    );
    assert_eq!(i(&m, "leafnodes/port"), 7422);
    let user = get(&m, "authorization/user");
    assert!(user.pos.file.ends_with("auth.conf"), "{:?}", user.pos);
    assert_eq!(user.pos.line, 1);

    // The included file can not see the parent's variables.
    std::fs::write(
        dir.path().join("child.conf"),
        "x: $PARENT_ONLY_VAR_CANOPY\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("parent.conf"),
        "PARENT_ONLY_VAR_CANOPY = 1\ninclude child.conf\n",
    )
    .unwrap();
    let e = parse_file(&dir.path().join("parent.conf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("child.conf:1:4") && e.contains("can not be found"),
        "{e}"
    );

    // Missing include: the error names the include line.
    std::fs::write(dir.path().join("bad.conf"), "a: 1\ninclude nope.conf\n").unwrap();
    let e = parse_file(&dir.path().join("bad.conf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.conf:2:1") && e.contains("nope.conf"), "{e}");

    // Include cycle.
    std::fs::write(dir.path().join("loop.conf"), "include loop.conf\n").unwrap();
    let e = parse_file(&dir.path().join("loop.conf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("include"), "{e}");

    // `include` followed by a separator is an ordinary key.
    let m = p("include: 5");
    assert_eq!(i(&m, "include"), 5);
}

#[test]
fn missing_file() {
    let e = parse_file(std::path::Path::new("/nonexistent/canopy.conf")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/canopy.conf"));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let src = format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(perr(&src).contains("nesting"));
    let src = format!("a: {}", "{b: ".repeat(10_000));
    assert!(perr(&src).contains("nesting"));
}

#[test]
fn crlf_and_bom() {
    let m = p("\u{feff}port: 1\r\nhost: h\r\n");
    assert_eq!(i(&m, "port"), 1);
    assert_eq!(s(&m, "host"), "h");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics(src in "[ -~\\n\\t{}\\[\\]:=,;#/\"'$()\\\\]{0,200}") {
            let _ = parse_str(&src, "fuzz.conf");
            let _ = canopy_conf::from_str(&src, "fuzz.conf");
        }

        #[test]
        fn never_panics_structured(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("a"), Just(":"), Just(" "), Just("\n"), Just("{"), Just("}"),
                    Just("["), Just("]"), Just(","), Just("\"x\""), Just("$a"), Just("1MB"),
                    Just("port"), Just("include"), Just("#c"), Just("("), Just(")"),
                    Just("leafnodes"), Just("remotes"), Just("="), Just("true"),
                ],
                0..60,
            )
        ) {
            let src: String = parts.concat();
            let _ = parse_str(&src, "fuzz.conf");
            if let Ok(o) = canopy_conf::from_str(&src, "fuzz.conf") {
                let _ = o.validate();
                let _ = o.warnings();
                let _ = o.unsupported();
            }
        }

        #[test]
        fn integers_roundtrip(n in any::<i64>()) {
            let m = parse_str(&format!("n: {n}"), "x").unwrap();
            prop_assert_eq!(m.get("n").unwrap().as_i64(), Some(n));
        }

        #[test]
        fn quoted_strings_roundtrip(s in "[a-zA-Z0-9 .:/>*_-]{0,40}") {
            let m = parse_str(&format!("k: \"{s}\""), "x").unwrap();
            prop_assert_eq!(m.get("k").unwrap().as_str(), Some(s.as_str()));
        }
    }
}
