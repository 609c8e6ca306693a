//! The engine's files import one another without a circle (issue 26, part 0): the seam
//! (`model.rs`), the ONNX Runtime wing (`ort/`), the instruments (`instruments/`) and the stages
//! each depend only "downwards". A `use crate::…` line and an inline `crate::…` or `super::…`
//! path both count; comments and `#[cfg(test)] mod tests` do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`det::postprocess`) → its source without comments and without its tests.
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut name = rel.to_string_lossy().replace('/', "::");
            if let Some(parent) = name.strip_suffix("::mod") {
                name = parent.to_owned();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            let code: String = text
                .lines()
                .map(|l| match l.find("//") {
                    Some(i) => &l[..i],
                    None => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, code);
        }
    }
    out
}

/// The modules a module's code names, by `crate::a::b` (the longest prefix that is a module) and
/// `super::x` paths.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeMap::new();
    for (name, code) in mods {
        let parent = name.rsplit_once("::").map(|(p, _)| p.to_owned());
        let mut to = BTreeSet::new();
        for (prefix, base) in [("crate::", None), ("super::", parent.clone())] {
            for (i, _) in code.match_indices(prefix) {
                if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let rest: String = code[i + prefix.len()..]
                    .chars()
                    .take_while(|&c| ident(c))
                    .collect();
                let parts: Vec<&str> = rest.split("::").filter(|s| !s.is_empty()).collect();
                let root = match (&base, prefix) {
                    (_, "crate::") => Vec::new(),
                    (Some(p), _) => p.split("::").collect(),
                    (None, _) => Vec::new(),
                };
                let mut target = None;
                for k in (0..=parts.len()).rev() {
                    let cand = root
                        .iter()
                        .chain(&parts[..k])
                        .copied()
                        .collect::<Vec<_>>()
                        .join("::");
                    if mods.contains_key(&cand) {
                        target = Some(cand);
                        break;
                    }
                }
                if let Some(t) = target {
                    // A module naming its own descendants or ancestors is its own business.
                    if t != *name
                        && !name.starts_with(&format!("{t}::"))
                        && !t.starts_with(&format!("{name}::"))
                    {
                        to.insert(t);
                    }
                }
            }
        }
        out.insert(name.clone(), to);
    }
    out
}

/// Every circle among the modules, each as the modules on it.
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Strongly connected components (Tarjan), those of more than one module.
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        for w in &t.g[v] {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.stack.contains(&w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_engine_s_files_import_one_another_without_a_circle() {
    let mods = modules();
    assert!(
        mods.len() > 20 && mods.contains_key("det::postprocess"),
        "{:?}",
        mods.keys()
    );
    let g = edges(&mods);
    let found = circles(&g);
    let show: Vec<String> = found
        .iter()
        .map(|c| {
            let arrows: Vec<String> = c
                .iter()
                .map(|m| {
                    format!(
                        "{m} → {:?}",
                        g[m].iter().filter(|t| c.contains(t)).collect::<Vec<_>>()
                    )
                })
                .collect();
            arrows.join("; ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import circles among the engine's files:\n{}",
        show.join("\n")
    );
}

/// The check itself finds a circle where there is one.
#[test]
fn a_circle_is_found() {
    let mods: BTreeMap<String, String> = [
        ("a", "use crate::b::X;"),
        ("b", "fn f() { crate::c::g() }"),
        ("c", "use super::a;"),
        ("d", "use crate::a;"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(circles(&edges(&mods)), vec![vec!["a", "b", "c"]]);
}
