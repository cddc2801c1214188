//! The launcher's config reader on arbitrary input: the config file's text up to the first NUL
//! byte, then one `--set` override per NUL-separated piece. It must return a config or a one-line
//! error, never panic; and a config it accepts must read back unchanged from the `config.toml` it
//! writes into the run directory (`--resume` and `eval` read that file).

#![no_main]

use libfuzzer_sys::fuzz_target;
use metaloop_fuzz::config;

fuzz_target!(|data: &[u8]| {
    let mut pieces = data.split(|b| *b == 0);
    let text = String::from_utf8_lossy(pieces.next().unwrap_or_default());
    let sets: Vec<String> = pieces
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    match config::resolve("fuzz.toml", &text, &sets) {
        Ok(cfg) => {
            let written = config::to_toml(&cfg).expect("a valid config serialises");
            let back = config::resolve("config.toml", &written, &[])
                .unwrap_or_else(|e| panic!("config.toml does not read back: {e}\n{written}"));
            assert_eq!(back, cfg, "config.toml reads back to another config:\n{written}");
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "a multi-line error: {line:?}");
        }
    }
});
