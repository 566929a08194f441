//! Codex's patch grammar: parsing a patch into file operations, and applying
//! an update's hunks to a file's text. Pure logic, no I/O: the `apply_patch`
//! tool reads and writes the files.
//!
//! ```text
//! *** Begin Patch
//! *** Add File: hello.txt
//! +Hello, world!
//! *** Update File: src/app.py
//! *** Move to: src/main.py
//! @@ def greet():
//! -print("Hi")
//! +print("Hello")
//! *** Delete File: obsolete.txt
//! *** End Patch
//! ```
//!
//! Hunks are located like codex does: after the optional `@@ header` line,
//! the old lines are searched from where the previous hunk ended, first
//! exactly, then ignoring trailing whitespace, then ignoring surrounding
//! whitespace, then with typographic punctuation folded to ASCII. A hunk
//! marked `*** End of File` is tried at the end of the file first.

/// One file operation of a patch, in patch order.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOp {
    Add {
        path: String,
        contents: String,
        line: usize,
    },
    Delete {
        path: String,
        line: usize,
    },
    Update {
        path: String,
        move_to: Option<String>,
        hunks: Vec<Hunk>,
        line: usize,
    },
}

impl FileOp {
    pub fn path(&self) -> &str {
        match self {
            FileOp::Add { path, .. }
            | FileOp::Delete { path, .. }
            | FileOp::Update { path, .. } => path,
        }
    }
}

/// One `@@` section of an update.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hunk {
    /// The text after `@@ `: a line to find before the old lines.
    pub header: Option<String>,
    pub old: Vec<String>,
    pub new: Vec<String>,
    /// `*** End of File`: the old lines end the file.
    pub end_of_file: bool,
    /// Patch line of the hunk's first line, for error messages.
    pub line: usize,
}

/// A malformed patch, with the 1-based patch line at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("patch line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// A hunk that does not fit the file's current contents.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("hunk {index} (patch line {line}): {message}")]
pub struct HunkError {
    /// 1-based hunk number within its file.
    pub index: usize,
    pub line: usize,
    pub message: String,
}

const BEGIN: &str = "*** Begin Patch";
const END: &str = "*** End Patch";
// Without the trailing space, so that an empty path is reported as such.
const ADD: &str = "*** Add File:";
const DELETE: &str = "*** Delete File:";
const UPDATE: &str = "*** Update File:";
const MOVE_TO: &str = "*** Move to:";
const END_OF_FILE: &str = "*** End of File";

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// Parses a whole patch.
pub fn parse(text: &str) -> Result<Vec<FileOp>, ParseError> {
    // (line number, text) pairs, so that stripping a heredoc wrapper keeps
    // the numbers the caller sees in their own patch.
    let mut lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .collect();
    while lines.last().is_some_and(|(_, l)| l.trim().is_empty()) {
        lines.pop();
    }
    while lines.first().is_some_and(|(_, l)| l.trim().is_empty()) {
        lines.remove(0);
    }
    // Models often wrap patches in a shell heredoc (`<<'EOF'` … `EOF`).
    if lines.len() >= 2 && lines[0].1.trim_start().starts_with("<<") {
        let last = lines[lines.len() - 1].1.trim();
        if !last.starts_with("***") {
            lines.remove(0);
            lines.pop();
        }
    }
    let Some(&(first_no, first)) = lines.first() else {
        return Err(err(
            1,
            "the patch is empty; it must start with '*** Begin Patch'",
        ));
    };
    if first.trim() != BEGIN {
        return Err(err(
            first_no,
            format!("expected '{BEGIN}', found {first:?}"),
        ));
    }
    let &(last_no, last) = lines.last().expect("non-empty");
    if lines.len() < 2 || last.trim() != END {
        return Err(err(last_no, format!("the patch must end with '{END}'")));
    }
    let body = &lines[1..lines.len() - 1];

    let mut ops = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let (no, line) = body[i];
        let header = line.trim_end();
        if let Some(path) = header.strip_prefix(ADD) {
            let path = file_path(no, path)?;
            i += 1;
            let mut contents = String::new();
            while i < body.len() && !body[i].1.starts_with("*** ") {
                let (no, l) = body[i];
                let Some(text) = l.strip_prefix('+') else {
                    return Err(err(
                        no,
                        format!("every line of an added file must start with '+', found {l:?}"),
                    ));
                };
                contents.push_str(text);
                contents.push('\n');
                i += 1;
            }
            ops.push(FileOp::Add {
                path,
                contents,
                line: no,
            });
        } else if let Some(path) = header.strip_prefix(DELETE) {
            ops.push(FileOp::Delete {
                path: file_path(no, path)?,
                line: no,
            });
            i += 1;
        } else if let Some(path) = header.strip_prefix(UPDATE) {
            let path = file_path(no, path)?;
            i += 1;
            let mut move_to = None;
            if let Some(&(mno, m)) = body.get(i) {
                if let Some(dest) = m.trim_end().strip_prefix(MOVE_TO) {
                    move_to = Some(file_path(mno, dest)?);
                    i += 1;
                }
            }
            let (hunks, next) = parse_hunks(body, i)?;
            if hunks.is_empty() {
                return Err(err(no, format!("the update of {path} has no hunks")));
            }
            i = next;
            ops.push(FileOp::Update {
                path,
                move_to,
                hunks,
                line: no,
            });
        } else {
            return Err(err(
                no,
                format!(
                    "expected '*** Add File: ', '*** Update File: ', '*** Delete File: ' or '{END}', found {line:?}"
                ),
            ));
        }
    }
    if ops.is_empty() {
        return Err(err(first_no, "the patch changes no file"));
    }
    Ok(ops)
}

fn file_path(line: usize, path: &str) -> Result<String, ParseError> {
    let path = path.trim();
    if path.is_empty() {
        return Err(err(line, "the file path is empty"));
    }
    Ok(path.to_string())
}

/// Parses the hunks of one update from `body[start..]`; returns them and
/// the index of the first line after them.
fn parse_hunks(body: &[(usize, &str)], start: usize) -> Result<(Vec<Hunk>, usize), ParseError> {
    let mut hunks: Vec<Hunk> = Vec::new();
    let mut i = start;
    while i < body.len() {
        let (no, line) = body[i];
        if line.trim_end() == END_OF_FILE {
            match hunks.last_mut() {
                Some(h) => h.end_of_file = true,
                None => return Err(err(no, "'*** End of File' before any hunk")),
            }
            i += 1;
            continue;
        }
        if line.starts_with("*** ") {
            break;
        }
        if let Some(rest) = line.strip_prefix("@@") {
            let header = rest.trim();
            hunks.push(Hunk {
                header: (!header.is_empty()).then(|| header.to_string()),
                line: no,
                ..Hunk::default()
            });
            i += 1;
            continue;
        }
        // The first hunk may omit its `@@` line.
        if hunks.is_empty() || hunks.last().is_some_and(|h| h.end_of_file) {
            hunks.push(Hunk {
                line: no,
                ..Hunk::default()
            });
        }
        let hunk = hunks.last_mut().expect("pushed above");
        match line.chars().next() {
            None => {
                hunk.old.push(String::new());
                hunk.new.push(String::new());
            }
            Some(' ') => {
                hunk.old.push(line[1..].to_string());
                hunk.new.push(line[1..].to_string());
            }
            Some('-') => hunk.old.push(line[1..].to_string()),
            Some('+') => hunk.new.push(line[1..].to_string()),
            Some(_) => {
                return Err(err(
                    no,
                    format!("a hunk line must start with ' ', '-' or '+', found {line:?}"),
                ))
            }
        }
        i += 1;
    }
    if let Some(h) = hunks.iter().find(|h| h.old.is_empty() && h.new.is_empty()) {
        return Err(err(h.line, "the hunk is empty"));
    }
    Ok((hunks, i))
}

/// Applies `hunks` to `original`, returning the new text. Files keep their
/// line ending style (LF or CRLF) and end with a newline.
pub fn apply_hunks(original: &str, hunks: &[Hunk]) -> Result<String, HunkError> {
    let crlf = original.contains("\r\n");
    let mut lines: Vec<String> = original
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }

    let mut replacements: Vec<(usize, usize, Vec<String>)> = Vec::new();
    let mut cursor = 0;
    for (i, h) in hunks.iter().enumerate() {
        let fail = |message: String| HunkError {
            index: i + 1,
            line: h.line,
            message,
        };
        if let Some(header) = &h.header {
            match seek(&lines, std::slice::from_ref(header), cursor, false) {
                Some(at) => cursor = at + 1,
                None => {
                    return Err(fail(format!(
                        "the context line {header:?} (after @@) was not found"
                    )))
                }
            }
        }
        if h.old.is_empty() {
            // A pure insertion goes at the end of the file.
            replacements.push((lines.len(), 0, h.new.clone()));
            continue;
        }
        let mut old = h.old.as_slice();
        let mut new = h.new.as_slice();
        let mut found = seek(&lines, old, cursor, h.end_of_file);
        // A trailing empty context line often stands for the file's final
        // newline; retry without it.
        if found.is_none() && old.last().is_some_and(|l| l.is_empty()) {
            old = &old[..old.len() - 1];
            if new.last().is_some_and(|l| l.is_empty()) {
                new = &new[..new.len() - 1];
            }
            found = if old.is_empty() {
                None
            } else {
                seek(&lines, old, cursor, h.end_of_file)
            };
        }
        match found {
            Some(at) => {
                replacements.push((at, old.len(), new.to_vec()));
                cursor = at + old.len();
            }
            None => {
                return Err(fail(format!(
                    "context not found: these lines are not in the file (after line {cursor}):\n{}",
                    h.old.join("\n")
                )))
            }
        }
    }
    replacements.sort_by_key(|r| r.0);
    for (at, len, new) in replacements.into_iter().rev() {
        lines.splice(at..at + len, new);
    }
    let eol = if crlf { "\r\n" } else { "\n" };
    let mut out = lines.join(eol);
    out.push_str(eol);
    Ok(out)
}

/// Where `pattern` starts in `lines`, searching from `start`, with ever
/// looser comparisons. With `eof`, a match at the very end wins.
fn seek(lines: &[String], pattern: &[String], start: usize, eof: bool) -> Option<usize> {
    if pattern.len() > lines.len() {
        return None;
    }
    let last = lines.len() - pattern.len();
    let compares: [fn(&str, &str) -> bool; 4] = [
        |a, b| a == b,
        |a, b| a.trim_end() == b.trim_end(),
        |a, b| a.trim() == b.trim(),
        |a, b| normalize(a) == normalize(b),
    ];
    for eq in compares {
        let fits = |at: usize| pattern.iter().zip(&lines[at..]).all(|(p, l)| eq(l, p));
        if eof && last >= start && fits(last) {
            return Some(last);
        }
        if let Some(at) = (start..=last).find(|&at| fits(at)) {
            return Some(at);
        }
    }
    None
}

/// Typographic punctuation and odd spaces folded to ASCII, then trimmed.
fn normalize(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            '\u{2010}'..='\u{2015}' | '\u{2212}' => '-',
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => '"',
            '\u{00A0}' | '\u{2002}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => ' ',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(text: &str) -> Vec<Hunk> {
        match parse(text).unwrap().remove(0) {
            FileOp::Update { hunks, .. } => hunks,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_every_operation() {
        let ops = parse(
            "*** Begin Patch\n*** Add File: a.txt\n+one\n+two\n*** Delete File: b.txt\n\
             *** Update File: c.py\n*** Move to: d.py\n@@ def f():\n-    x = 1\n+    x = 2\n*** End Patch\n",
        )
        .unwrap();
        assert_eq!(
            ops[0],
            FileOp::Add {
                path: "a.txt".into(),
                contents: "one\ntwo\n".into(),
                line: 2
            }
        );
        assert_eq!(
            ops[1],
            FileOp::Delete {
                path: "b.txt".into(),
                line: 5
            }
        );
        let FileOp::Update {
            path,
            move_to,
            hunks,
            ..
        } = &ops[2]
        else {
            panic!()
        };
        assert_eq!((path.as_str(), move_to.as_deref()), ("c.py", Some("d.py")));
        assert_eq!(hunks[0].header.as_deref(), Some("def f():"));
        assert_eq!(hunks[0].old, ["    x = 1"]);
        assert_eq!(hunks[0].new, ["    x = 2"]);
        assert_eq!(hunks[0].line, 8);
    }

    #[test]
    fn malformed_patches_name_the_line() {
        for (patch, line, needle) in [
            ("", 1, "empty"),
            ("hello\n*** End Patch", 1, "expected '*** Begin Patch'"),
            ("*** Begin Patch\n*** Add File: a\n+x", 3, "must end with"),
            (
                "*** Begin Patch\n*** Add File: a\nx\n*** End Patch",
                3,
                "must start with '+'",
            ),
            (
                "*** Begin Patch\n*** Frobnicate: a\n*** End Patch",
                2,
                "expected '*** Add File",
            ),
            (
                "*** Begin Patch\n*** Update File: a\n*** End Patch",
                2,
                "has no hunks",
            ),
            (
                "*** Begin Patch\n*** Update File: a\n@@\n?x\n*** End Patch",
                4,
                "must start with ' '",
            ),
            (
                "*** Begin Patch\n*** Delete File:   \n*** End Patch",
                2,
                "path is empty",
            ),
            ("*** Begin Patch\n*** End Patch", 1, "changes no file"),
        ] {
            let e = parse(patch).unwrap_err();
            assert_eq!(e.line, line, "{patch:?}: {e}");
            assert!(e.message.contains(needle), "{patch:?}: {e}");
        }
    }

    #[test]
    fn heredoc_wrappers_and_crlf_are_accepted() {
        let ops =
            parse("<<'EOF'\r\n*** Begin Patch\r\n*** Delete File: x\r\n*** End Patch\r\nEOF\r\n")
                .unwrap();
        assert_eq!(ops[0].path(), "x");
    }

    #[test]
    fn multi_hunk_update() {
        let hunks = update(
            "*** Begin Patch\n*** Update File: f\n@@\n a\n-b\n+B\n c\n@@\n x\n-y\n+Y1\n+Y2\n*** End Patch",
        );
        let out = apply_hunks("a\nb\nc\nd\nx\ny\nz\n", &hunks).unwrap();
        assert_eq!(out, "a\nB\nc\nd\nx\nY1\nY2\nz\n");
    }

    #[test]
    fn header_anchors_the_search_and_whitespace_is_tolerated() {
        let hunks = update(
            "*** Begin Patch\n*** Update File: f\n@@ def two():\n-    return 1\n+    return 2\n*** End Patch",
        );
        let src = "def one():\n    return 1\ndef two():\n    return 1   \n";
        assert_eq!(
            apply_hunks(src, &hunks).unwrap(),
            "def one():\n    return 1\ndef two():\n    return 2\n"
        );
    }

    #[test]
    fn context_not_found_names_the_hunk() {
        let hunks =
            update("*** Begin Patch\n*** Update File: f\n@@\n-a\n+b\n@@\n-nope\n+x\n*** End Patch");
        let e = apply_hunks("a\n", &hunks).unwrap_err();
        assert_eq!((e.index, e.line), (2, 6));
        assert!(e.message.contains("context not found"), "{e}");
        let e = apply_hunks(
            "zzz\n",
            &update("*** Begin Patch\n*** Update File: f\n@@ missing\n-zzz\n*** End Patch"),
        )
        .unwrap_err();
        assert!(e.message.contains("\"missing\""), "{e}");
    }

    #[test]
    fn end_of_file_prefers_the_last_match_and_insertions_append() {
        let hunks = update(
            "*** Begin Patch\n*** Update File: f\n@@\n-x\n+y\n*** End of File\n*** End Patch",
        );
        assert_eq!(apply_hunks("x\nmid\nx\n", &hunks).unwrap(), "x\nmid\ny\n");
        let hunks = update("*** Begin Patch\n*** Update File: f\n@@\n+tail\n*** End Patch");
        assert_eq!(apply_hunks("a\n", &hunks).unwrap(), "a\ntail\n");
    }

    #[test]
    fn crlf_files_keep_crlf_and_unicode_punctuation_matches() {
        let hunks = update(
            "*** Begin Patch\n*** Update File: f\n@@\n-say \"hi\" - ok\n+bye\n*** End Patch",
        );
        assert_eq!(
            apply_hunks("say \u{201C}hi\u{201D} \u{2013} ok\r\nnext\r\n", &hunks).unwrap(),
            "bye\r\nnext\r\n"
        );
    }
}
