//! Omniglot's zip reader on arbitrary archives: the input is `images_background.zip`, beside an
//! `images_evaluation/` folder of one character, and the loader lists, bounds and decodes its
//! entries. It must return a dataset or an error (sizes beyond the caps included), never panic
//! or allocate what an entry merely claims.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metaloop_engine::data::omniglot::{self, OmniglotConfig};
use metaloop_fuzz::{png_bytes, scratch, write};

fuzz_target!(|data: &[u8]| {
    let root = scratch("zip");
    write(&root.join("images_background.zip"), data);
    write(
        &root.join("images_evaluation/Beta/character01/1.png"),
        &png_bytes(28, 28),
    );
    let mut config = OmniglotConfig::new(&root);
    config.train_characters = 1;
    config.val_characters = 0;
    let _ = omniglot::load(&config);
    let _ = std::fs::remove_dir_all(&root);
});
