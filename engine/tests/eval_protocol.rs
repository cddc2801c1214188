//! The evaluation protocol (`eval.ways`, `eval.shots`): a 5-way run meta-tested on 10-way 2-shot
//! tasks through a zero-initialised 10-row head, the trained protocol repeating the default
//! evaluation exactly, sinusoid support points, and the splits' checks naming the key.

#[path = "data_support/mod.rs"]
#[allow(dead_code)]
mod data_support;

use data_support::{folder_conv4_config, write_character, TempDir};
use metaloop_engine::config::TrainConfig;
use metaloop_engine::data::Split;
use metaloop_engine::train::Trainer;
use metaloop_engine::Error;
use metaloop_runtime::comm::Local;

/// `classes` generated characters from `first_class` on, one folder each, `drawings` each.
fn write_split(root: &std::path::Path, first_class: u32, classes: u32, drawings: u32) {
    for c in first_class..first_class + classes {
        for d in 0..drawings {
            write_character(
                &root.join(format!("class{c:03}")).join(format!("{d}.png")),
                c,
                d,
            );
        }
    }
}

/// A 5-way 1-shot Conv-4 config over generated folders: 12 training and 12 test characters of 6
/// drawings each.
fn five_way(tmp: &TempDir) -> TrainConfig {
    write_split(&tmp.path().join("train"), 0, 12, 6);
    write_split(&tmp.path().join("test"), 100, 12, 6);
    let mut cfg = folder_conv4_config(tmp.path());
    cfg.outer.meta_batch = 4;
    cfg.outer.iterations = 40;
    cfg.eval.test_tasks = 40;
    cfg
}

#[test]
fn a_five_way_run_meta_tests_on_ten_way_two_shot_tasks_well_above_chance() {
    let tmp = TempDir::new("eval-ten-way");
    let mut cfg = five_way(&tmp);
    cfg.eval.ways = 10;
    cfg.eval.shots = 2;
    cfg.eval.inner_steps = 5;
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    trainer.fit(None, &mut ()).unwrap();
    let report = trainer.evaluate(Split::Test, cfg.eval.test_tasks).unwrap();
    let (before, after) = (
        report.accuracy_before.unwrap(),
        report.accuracy_after.unwrap(),
    );
    eprintln!(
        "10-way 2-shot test accuracy before {:.3} ± {:.3}, after {:.3} ± {:.3}",
        before.mean, before.ci95, after.mean, after.ci95
    );
    assert_eq!((report.ways, report.shots), (Some(10), 2));
    // The zero head predicts every class alike before adaptation: the loss is ln 10 and the
    // arg-max (the first of equal logits) is right for class 0's 3 of 30 queries.
    assert!(
        (report.loss_before.mean - 10f64.ln()).abs() < 1e-5,
        "{}",
        report.loss_before.mean
    );
    assert!(
        (before.mean - 0.1).abs() < 1e-6 && before.ci95 < 1e-6,
        "{before:?}"
    );
    // Chance is 1/10. Five steps from the zero head on two drawings per class of unseen
    // characters (measured: 0.62 ± 0.02 after 40 iterations) must reach three times chance
    // with the 95% interval above it: far from chance, with room below what the run reaches.
    assert!(
        after.mean - after.ci95 > 0.3,
        "accuracy after adaptation {} ± {} is not well above chance 0.1",
        after.mean,
        after.ci95
    );
}

#[test]
fn the_trained_ways_and_shots_evaluate_exactly_as_the_default() {
    let tmp = TempDir::new("eval-same-protocol");
    let mut cfg = five_way(&tmp);
    cfg.outer.iterations = 3;
    let mut explicit = cfg.clone();
    explicit.eval.ways = 5;
    explicit.eval.shots = 1;
    let mut reports = Vec::new();
    for c in [&cfg, &explicit] {
        let mut trainer = Trainer::builder(c).threads(1).build().unwrap();
        trainer.fit(None, &mut ()).unwrap();
        reports.push(trainer.evaluate(Split::Test, 12).unwrap());
    }
    let json = |r| serde_json::to_string(r).unwrap();
    assert_eq!(json(&reports[0]), json(&reports[1]));
    assert_eq!((reports[0].ways, reports[0].shots), (Some(5), 1));
}

#[test]
fn sinusoid_evaluates_with_eval_shots_support_points_and_has_no_ways() {
    let mut cfg = TrainConfig::default();
    cfg.model.hidden = vec![8];
    cfg.eval.shots = 20;
    let trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    let report = trainer.evaluate(Split::Test, 4).unwrap();
    assert_eq!((report.ways, report.shots), (None, 20));
    cfg.eval.shots = 0;
    let default = Trainer::new(&cfg, Box::new(Local))
        .unwrap()
        .evaluate(Split::Test, 4)
        .unwrap();
    assert_eq!(default.shots, 10);
    assert!(report.loss_after.mean.is_finite());
    assert_ne!(report.loss_after, default.loss_after);
    cfg.eval.ways = 2;
    let Err(Error::Config(e)) = Trainer::new(&cfg, Box::new(Local)) else {
        panic!("eval.ways on sinusoid was accepted");
    };
    assert_eq!(e.key, "eval.ways");
}

#[test]
fn more_eval_ways_than_the_test_split_has_classes_is_a_config_error() {
    let tmp = TempDir::new("eval-ways-too-many");
    let mut cfg = five_way(&tmp);
    cfg.eval.ways = 13;
    let Err(Error::Config(e)) = Trainer::new(&cfg, Box::new(Local)) else {
        panic!("13 ways over 12 test classes were accepted");
    };
    assert_eq!(e.key, "eval.ways");
    assert!(e.message.contains("the test split has 12 classes"), "{e}");
}
