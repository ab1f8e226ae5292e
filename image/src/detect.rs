use skiff_spec::AppKind;
use wasmparser::{ExternalKind, Parser, Payload, Validator, WasmFeatures};

/// Why a binary cannot be deployed, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    /// Zero bytes.
    #[error("the upload is empty")]
    Empty,
    /// No wasm magic number.
    #[error("not a WebAssembly binary: it does not start with the \\0asm magic number")]
    NotWasm,
    /// wasmparser refused it; the message carries its offset.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// A component that does not export `wasi:http/incoming-handler`.
    #[error(
        "component does not export wasi:http/incoming-handler@0.2.x (it exports: {exports}); \
         only wasi:http proxy components are runnable as http apps"
    )]
    NotHttpComponent {
        /// Its top-level exports, comma-separated.
        exports: String,
    },
    /// A core module without a `_start` function.
    #[error(
        "module has no _start export (it exports: {exports}); WAGI apps must be WASI command modules"
    )]
    NotCommand {
        /// Its exports, comma-separated.
        exports: String,
    },
}

/// Validates `bytes` and tells what kind of app they hold.
pub fn detect_kind(bytes: &[u8]) -> Result<AppKind, DetectError> {
    if bytes.is_empty() {
        return Err(DetectError::Empty);
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(DetectError::NotWasm);
    }
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    validator
        .validate_all(bytes)
        .map_err(|e| DetectError::Invalid(e.to_string()))?;

    let is_component = Parser::is_component(bytes);
    let mut depth = 0usize;
    let mut exports = Vec::new();
    let mut has_start = false;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| DetectError::Invalid(e.to_string()))?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| DetectError::Invalid(e.to_string()))?;
                    exports.push(export.name.name.to_string());
                }
            }
            Payload::ExportSection(reader) if depth == 1 && !is_component => {
                for export in reader {
                    let export = export.map_err(|e| DetectError::Invalid(e.to_string()))?;
                    if export.name == "_start" && export.kind == ExternalKind::Func {
                        has_start = true;
                    }
                    exports.push(export.name.to_string());
                }
            }
            _ => {}
        }
    }
    let listed = || {
        if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }
    };
    if is_component {
        if exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2."))
        {
            Ok(AppKind::Http)
        } else {
            Err(DetectError::NotHttpComponent { exports: listed() })
        }
    } else if has_start {
        Ok(AppKind::Wagi)
    } else {
        Err(DetectError::NotCommand { exports: listed() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_modules_are_wagi() {
        let wasm =
            wat::parse_str(r#"(module (func (export "_start")) (memory (export "memory") 1))"#)
                .unwrap();
        assert_eq!(detect_kind(&wasm), Ok(AppKind::Wagi));
    }

    #[test]
    fn modules_without_start_are_refused_with_their_exports() {
        let wasm = wat::parse_str(r#"(module (func (export "run")))"#).unwrap();
        let err = detect_kind(&wasm).unwrap_err();
        assert_eq!(
            err,
            DetectError::NotCommand {
                exports: "run".into()
            }
        );
    }

    #[test]
    fn components_of_other_worlds_are_refused() {
        let wasm = wat::parse_str(
            r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
                (func (export "greet") (canon lift (core func $i "f"))))"#,
        )
        .unwrap();
        let err = detect_kind(&wasm).unwrap_err();
        assert!(
            matches!(&err, DetectError::NotHttpComponent { exports } if exports == "greet"),
            "{err}"
        );
    }

    #[test]
    fn junk_is_refused_with_the_parser_message() {
        assert_eq!(detect_kind(b""), Err(DetectError::Empty));
        assert_eq!(
            detect_kind(b"#!/bin/sh\necho hi\n"),
            Err(DetectError::NotWasm)
        );
        let wasm = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let truncated = &wasm[..wasm.len() - 3];
        let err = detect_kind(truncated).unwrap_err();
        assert!(
            matches!(&err, DetectError::Invalid(m) if m.contains("offset")),
            "{err}"
        );
        let mut bad_version = wasm.clone();
        bad_version[4] = 9;
        assert!(matches!(
            detect_kind(&bad_version),
            Err(DetectError::Invalid(_))
        ));
    }
}
