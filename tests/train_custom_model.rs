//! examples/custom_model.rs (a model, a task source and a loss defined outside the engine,
//! trained through the Trainer's builder and fit loop) meta-trains: adaptation on new tasks
//! helps.

#[path = "../examples/custom_model.rs"]
#[allow(dead_code)]
mod custom_model;

#[test]
fn the_custom_model_example_meta_trains() {
    let report = custom_model::train(300).unwrap();
    assert_eq!(report.metric, "half_mse");
    assert!(
        report.loss_after.mean < 0.5 * report.loss_before.mean,
        "adaptation does not help the custom model: {report:?}"
    );
}
