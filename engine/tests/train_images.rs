//! Meta-training end to end on an image dataset: real PNG files in the folder-per-class layout,
//! decoded, cached and batched into 5-way 1-shot episodes for a Conv-4 (BatchNorm with batch
//! statistics per task), trained with second-order MAML; accuracy is reported with its CI.

#[path = "data_support/mod.rs"]
#[allow(dead_code)]
mod data_support;

use data_support::{folder_conv4_config, write_character, write_rgb, TempDir};
use metaloop_engine::config::{Backbone, Memory, TaskKind, TrainConfig};
use metaloop_engine::data::Split;
use metaloop_engine::train::Trainer;
use metaloop_runtime::comm::Local;

fn write_split(root: &std::path::Path, first_class: u32, classes: u32, drawings: u32) {
    for c in first_class..first_class + classes {
        for d in 0..drawings {
            write_rgb(
                &root.join(format!("class{c:03}")).join(format!("{d}.png")),
                32,
                32,
                c,
                d,
            );
        }
    }
}

#[test]
fn maml_on_conv4_learns_five_way_one_shot_episodes_from_png_folders() {
    let tmp = TempDir::new("train-images");
    write_split(&tmp.path().join("train"), 0, 12, 6);
    write_split(&tmp.path().join("test"), 100, 8, 6);
    let mut cfg = folder_conv4_config(tmp.path());
    cfg.algorithm.inner_steps = 1;
    cfg.outer.meta_batch = 4;
    cfg.outer.iterations = 150;
    cfg.eval.test_tasks = 40;
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    let mut accuracy = Vec::new();
    for _ in 0..cfg.outer.iterations {
        let m = trainer.step().unwrap();
        assert!(m.meta_loss.is_finite());
        accuracy.push(m.query_accuracy.expect("classification reports accuracy"));
    }
    let report = trainer.evaluate(Split::Test, cfg.eval.test_tasks).unwrap();
    let (before, after) = (
        report.accuracy_before.unwrap(),
        report.accuracy_after.unwrap(),
    );
    eprintln!("train query accuracy {:.3} -> {:.3}; test accuracy before {:.3} ± {:.3}, after {:.3} ± {:.3}", accuracy[0], accuracy[accuracy.len() - 1], before.mean, before.ci95, after.mean, after.ci95);
    assert_eq!(report.metric, "accuracy");
    assert!(
        cache_written(&tmp.path().join("cache")),
        "decoded images were not cached"
    );
    // Before adaptation the head cannot know which label is which class: chance is 1/5.
    assert!(
        before.mean < 0.45,
        "accuracy before adaptation {} is far above chance",
        before.mean
    );
    // One inner step on one example per class must beat chance clearly on unseen classes.
    assert!(
        after.mean - after.ci95 > 0.3,
        "accuracy after adaptation {} ± {} is not above chance",
        after.mean,
        after.ci95
    );
}

fn cache_written(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "u8"))
        })
        .unwrap_or(false)
}

/// MAML's split needs 1100 + 100 characters before any test character: 1210 characters in
/// all, in Omniglot's layout (images_background / images_evaluation, alphabet/character/*.png),
/// two drawings each.
fn write_omniglot(root: &std::path::Path) {
    let mut class = 0;
    for (set, alphabets) in [("images_background", 20), ("images_evaluation", 11)] {
        for a in 0..alphabets {
            for c in 0..40 {
                if class == 1210 {
                    break;
                }
                for d in 0..2 {
                    let path = root
                        .join(set)
                        .join(format!("Alphabet_{a:02}"))
                        .join(format!("character{c:02}"))
                        .join(format!("{:04}_{:02}.png", class + 1, d + 1));
                    write_character(&path, class, d);
                }
                class += 1;
            }
        }
    }
    assert_eq!(class, 1210);
}

#[test]
fn maml_on_conv4_rises_above_chance_on_omniglot_format_data() {
    let tmp = TempDir::new("train-omniglot");
    write_omniglot(tmp.path());
    let mut cfg = TrainConfig::default();
    cfg.task.kind = TaskKind::Omniglot;
    cfg.task.root = tmp.path().display().to_string();
    cfg.task.cache_dir = tmp.path().join("cache").display().to_string();
    cfg.task.ways = 5;
    cfg.task.shots = 1;
    cfg.task.queries = 1;
    cfg.task.image_size = 28;
    cfg.model.backbone = Backbone::Conv4;
    cfg.model.filters = 16;
    cfg.algorithm.inner_lr = 0.4; // MAML's Omniglot values: 1 step of 0.4
    cfg.outer.meta_batch = 8;
    cfg.outer.iterations = 60;
    cfg.eval.test_tasks = 60;
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    for _ in 0..cfg.outer.iterations {
        assert!(trainer.step().unwrap().meta_loss.is_finite());
    }
    let report = trainer.evaluate(Split::Test, cfg.eval.test_tasks).unwrap();
    let (before, after) = (
        report.accuracy_before.unwrap(),
        report.accuracy_after.unwrap(),
    );
    eprintln!(
        "omniglot-format test accuracy before {:.3} ± {:.3}, after {:.3} ± {:.3}",
        before.mean, before.ci95, after.mean, after.ci95
    );
    // Chance is 1/5; held-out characters after one step on one example each.
    assert!(
        after.mean - after.ci95 > 0.3,
        "accuracy after adaptation {} ± {} is not clearly above chance",
        after.mean,
        after.ci95
    );
}

/// A miniImageNet-layout dataset (`images/` + `train.csv`, `val.csv`, `test.csv`) of generated
/// `side`×`side` JPEGs: `classes` classes per split, `drawings` images each.
fn write_miniimagenet(root: &std::path::Path, classes: [u32; 3], drawings: u32, side: u32) {
    let mut class = 0;
    for (split, n) in ["train", "val", "test"].into_iter().zip(classes) {
        let mut csv = String::from("filename,label\n");
        for _ in 0..n {
            let label = format!("n{:07}", 1000 + class);
            for d in 0..drawings {
                let file = format!("{label}{:08}.jpg", d + 1);
                write_rgb(&root.join("images").join(&file), side, side, class, d);
                csv.push_str(&format!("{file},{label}\n"));
            }
            class += 1;
        }
        std::fs::write(root.join(format!("{split}.csv")), csv).unwrap();
    }
}

#[test]
fn maml_on_a_small_resnet12_learns_miniimagenet_layout_episodes() {
    let tmp = TempDir::new("train-resnet12");
    write_miniimagenet(tmp.path(), [12, 5, 8], 6, 16);
    let mut cfg = TrainConfig::default();
    cfg.run.threads = 1;
    cfg.task.kind = TaskKind::Miniimagenet;
    cfg.task.root = tmp.path().display().to_string();
    cfg.task.cache_dir = tmp.path().join("cache").display().to_string();
    cfg.task.ways = 5;
    cfg.task.shots = 1;
    cfg.task.queries = 3;
    cfg.task.image_size = 16;
    cfg.model.backbone = Backbone::Resnet12;
    cfg.model.widths = vec![8, 16, 16, 16];
    cfg.algorithm.inner_steps = 1;
    cfg.algorithm.inner_lr = 0.1;
    cfg.outer.lr = 3e-3;
    cfg.algorithm.memory = Memory::Recompute;
    cfg.outer.meta_batch = 4;
    cfg.outer.iterations = 60;
    cfg.eval.test_tasks = 40;
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    for _ in 0..cfg.outer.iterations {
        assert!(trainer.step().unwrap().meta_loss.is_finite());
    }
    let report = trainer.evaluate(Split::Test, cfg.eval.test_tasks).unwrap();
    let after = report.accuracy_after.unwrap();
    eprintln!(
        "resnet12 test accuracy after {:.3} ± {:.3}",
        after.mean, after.ci95
    );
    // Chance is 1/5 on unseen classes. The bar: the lower end of the 95% CI at least twice
    // chance (0.4). Measured: 0.66 ± 0.04 after 60 iterations. The images are
    // 16×16 (four 2×2 poolings leave 1×1 maps) to keep the test short; DropBlock (which needs
    // maps of at least 2×2 after the last block) and augmentation have their own tests
    // (nn_layers, data_augment) and slow learning down beyond what a test affords.
    assert!(
        after.mean - after.ci95 > 0.4,
        "accuracy after adaptation {} ± {} is not above chance",
        after.mean,
        after.ci95
    );
}

/// A folder dataset in `tmp` and a ResNet-12 of width 4 on it, in f64 with one worker, 32×32
/// images with the standard augmentation, DropBlock, two inner steps and two iterations.
fn small_resnet12_f64(tmp: &TempDir) -> TrainConfig {
    use metaloop_engine::config::{Augment, DropBlockConfig, Dtype};
    write_split(&tmp.path().join("train"), 0, 8, 4);
    write_split(&tmp.path().join("test"), 100, 6, 4);
    let mut cfg = folder_conv4_config(tmp.path());
    cfg.run.dtype = Dtype::F64;
    cfg.run.workers = 1;
    cfg.task.image_size = 32;
    cfg.task.augment = Augment::Standard;
    cfg.model.backbone = Backbone::Resnet12;
    cfg.model.widths = vec![4, 4, 4, 4];
    cfg.model.dropblock = Some(DropBlockConfig { rate: 0.2, size: 1 });
    cfg.algorithm.inner_steps = 2;
    cfg.algorithm.inner_lr = 0.1;
    cfg.outer.iterations = 2;
    cfg
}

/// Task chunks change no task: with ResNet-12's Dropout and DropBlock masks and the standard
/// support augmentation (all drawn from the seed, the iteration and the task index), chunks of
/// one or three tasks give the whole meta-batch's meta-gradient (f64, summation order only),
/// with full tracking and with recompute.
#[test]
fn task_chunks_keep_masks_and_augmentation_of_every_task() {
    let tmp = TempDir::new("train-chunks");
    let mut cfg = small_resnet12_f64(&tmp);
    cfg.outer.meta_batch = 4;
    for memory in [Memory::Full, Memory::Recompute] {
        cfg.algorithm.memory = memory;
        let run = |chunk: usize| {
            let mut c = cfg.clone();
            c.run.task_chunk = chunk;
            let mut t = Trainer::new(&c, Box::new(Local)).unwrap();
            let norms: Vec<f64> = (0..2).map(|_| t.step().unwrap().grad_norm).collect();
            (norms, t.state().unwrap())
        };
        let (whole_norms, whole) = run(0);
        for chunk in [1, 3] {
            let (norms, chunked) = run(chunk);
            for (a, b) in whole_norms.iter().zip(&norms) {
                assert!(
                    (a - b).abs() <= 1e-10 * (1.0 + a.abs()),
                    "{memory}: meta-gradient norm {a} whole, {b} in chunks of {chunk}"
                );
            }
            for ((n, a), (_, b)) in whole.iter().zip(&chunked) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(
                    d <= 1e-10,
                    "{memory}: `{n}` differs by {d:e} between the whole meta-batch and chunks of {chunk}"
                );
            }
        }
    }
}

/// MAML++'s per-step BatchNorm (`model.per_step_batchnorm`) on ResNet-12 with the multi-step
/// loss: recompute-and-adjoint trains exactly like full tracking (f64; the adjoint pass reads
/// each step's rows as the forward did), and the rows learn apart: row 0 of a BatchNorm's
/// weight serves the first inner step, the last row the later ones and the query.
#[test]
fn per_step_batchnorm_trains_alike_with_recompute_and_its_rows_part() {
    let tmp = TempDir::new("train-per-step-bn");
    let mut cfg = small_resnet12_f64(&tmp);
    cfg.model.per_step_batchnorm = true;
    cfg.algorithm.inner_steps = 3;
    cfg.algorithm.multi_step_loss = true;
    cfg.outer.meta_batch = 2;
    cfg.validate().unwrap();
    let run = |memory: Memory| {
        let mut c = cfg.clone();
        c.algorithm.memory = memory;
        let mut t = Trainer::new(&c, Box::new(Local)).unwrap();
        for _ in 0..2 {
            t.step().unwrap();
        }
        t.state().unwrap()
    };
    let full = run(Memory::Full);
    let recompute = run(Memory::Recompute);
    for ((n, a), (_, b)) in full.iter().zip(&recompute) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(
            d <= 1e-10,
            "`{n}` differs by {d:e} between full tracking and recompute"
        );
    }
    let weight = &full
        .iter()
        .find(|(n, _)| n == "layer1.0.bn1.weight")
        .unwrap()
        .1;
    assert_eq!(weight.size(), [3, 4]);
    let apart = (weight.get(0) - weight.get(2))
        .abs()
        .max()
        .double_value(&[]);
    assert!(apart > 1e-6, "the per-step rows did not learn apart");
    // The MLP has no BatchNorm, iMAML no per-step inner problem: both are refused.
    let refused = |c: &TrainConfig| {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("model.per_step_batchnorm"), "{e}");
    };
    let mut mlp = TrainConfig::default();
    mlp.model.per_step_batchnorm = true;
    refused(&mlp);
    let mut imaml = cfg.clone();
    imaml.algorithm.name = metaloop_engine::config::AlgorithmName::Imaml;
    imaml.algorithm.multi_step_loss = false;
    refused(&imaml);
}

/// `run.conv_tasks` and `run.channels_last` pick kernels, never values: on a ResNet-12 (3×3 and
/// strided 1×1 convolutions, BatchNorm, DropBlock) with augmentation, every choice gives the
/// model of the default after two iterations (f64, summation order only).
#[test]
fn convolution_switches_train_the_same_model() {
    use metaloop_engine::config::ConvTasks;
    let tmp = TempDir::new("train-conv-switches");
    let mut cfg = small_resnet12_f64(&tmp);
    cfg.outer.meta_batch = 3;
    let run = |how: ConvTasks, channels_last: bool| {
        let mut c = cfg.clone();
        c.run.conv_tasks = how;
        c.run.channels_last = channels_last;
        let mut t = Trainer::new(&c, Box::new(Local)).unwrap();
        for _ in 0..2 {
            t.step().unwrap();
        }
        t.state().unwrap()
    };
    let want = run(ConvTasks::Auto, false);
    for how in [ConvTasks::Grouped, ConvTasks::Gemm, ConvTasks::PerTask] {
        for channels_last in [false, true] {
            let got = run(how, channels_last);
            for ((n, a), (_, b)) in want.iter().zip(&got) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(
                    d <= 1e-10,
                    "{how}, channels_last {channels_last}: `{n}` differs by {d:e} from the default's"
                );
            }
        }
    }
}

/// configs/omniglot_20way_1shot_mamlpp.toml, shrunk (5-way, 16 filters, 2 inner steps, 80
/// iterations with the switch to second order at 40), trains above chance on generated
/// Omniglot-layout data, and each of its switches acts: the LSLR rates stay at their start
/// during the first-order iterations and move after the switch, the multi-step loss is on, the
/// cosine schedule lowers the outer learning rate, and the per-step BatchNorm rows part.
#[test]
fn the_mamlpp_config_shrunk_trains_above_chance_with_every_switch() {
    let tmp = TempDir::new("train-mamlpp");
    write_omniglot(tmp.path());
    let path = format!(
        "{}/../configs/omniglot_20way_1shot_mamlpp.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut cfg: TrainConfig = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(cfg.algorithm.name.name(), "lslr");
    assert!(cfg.algorithm.multi_step_loss && cfg.algorithm.first_order_until > 0);
    assert_eq!(cfg.outer.schedule.name(), "cosine");
    assert!(cfg.model.per_step_batchnorm);
    cfg.run.device = metaloop_engine::config::DeviceChoice::Cpu;
    cfg.task.root = tmp.path().display().to_string();
    cfg.task.cache_dir = tmp.path().join("cache").display().to_string();
    cfg.task.ways = 5;
    cfg.model.filters = 16;
    cfg.algorithm.inner_steps = 2;
    cfg.algorithm.first_order_until = 40;
    cfg.outer.meta_batch = 8;
    cfg.outer.iterations = 80;
    cfg.outer.min_lr = 1e-4;
    cfg.eval.every = 0;
    cfg.eval.inner_steps = 2;
    cfg.eval.test_tasks = 60;
    cfg.validate().unwrap();
    let mut trainer = Trainer::new(&cfg, Box::new(Local)).unwrap();
    let lr_moved = |t: &Trainer| -> f64 {
        let lr = &t.learned_hparams()[0].tensor;
        (lr - cfg.algorithm.inner_lr).abs().max().double_value(&[])
    };
    let mut rates = Vec::new();
    for i in 0..cfg.outer.iterations {
        let m = trainer.step().unwrap();
        assert!(m.meta_loss.is_finite());
        rates.push(m.outer_lr);
        if i + 1 == cfg.algorithm.first_order_until {
            assert_eq!(
                lr_moved(&trainer),
                0.0,
                "LSLR rates moved while first order"
            );
        }
    }
    assert!(
        lr_moved(&trainer) > 1e-5,
        "LSLR rates did not move after the switch"
    );
    assert!(
        rates[rates.len() - 1] < 0.2 * rates[0],
        "no cosine decay: {rates:?}"
    );
    // BNWB: one row per inner step, and the rows learned apart.
    let bias = trainer.model_params().get("0.1.bias").unwrap();
    assert_eq!(bias.size(), [2, 16]);
    let apart = (bias.get(0) - bias.get(1)).abs().max().double_value(&[]);
    assert!(
        apart > 1e-6,
        "the per-step BatchNorm rows did not learn apart"
    );
    let report = trainer.evaluate(Split::Test, cfg.eval.test_tasks).unwrap();
    let after = report.accuracy_after.unwrap();
    eprintln!(
        "MAML++ (shrunk): test accuracy after {:.3} ± {:.3}",
        after.mean, after.ci95
    );
    assert!(
        after.mean - after.ci95 > 0.3,
        "accuracy after adaptation {} ± {} is not clearly above chance (0.2)",
        after.mean,
        after.ci95
    );
}
