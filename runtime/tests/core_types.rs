//! The runtime's core types compile and run as a user writes them: `Params`, a functional
//! `nn::Module`, a differentiable optimizer and `InnerLoop`, in the shape of higher's
//! `innerloop_ctx` example (with the values it leaves to the reader filled in).

use metaloop_runtime::nn::Module;
use metaloop_runtime::{nn, optim, InnerLoop, Params, StepOptions};
use tch::{Device, Kind, Tensor};

#[test]
fn core_types_snippet_compiles_and_runs() -> Result<(), metaloop_runtime::Error> {
    let seed = 0;
    let x = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    let w = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
    let lr = Tensor::from_slice(&[0.3f32]).set_requires_grad(true);
    let mom = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);

    let model = nn::Sequential::new()
        .push(nn::Linear::new(2, 3))
        .push(nn::Tanh)
        .push(nn::Linear::new(3, 1));
    let tiny = nn::Linear::new(1, 1).no_bias(); // parameter "weight" only
    assert_eq!(tiny.layout()?.names().collect::<Vec<_>>(), vec!["weight"]);
    let params = Params::init(&model, seed, Kind::Float, Device::Cpu)?; // requires_grad leaves
    params.set("0.weight", &w)?; // copy values in, no graph
    let _view = params.get("0.weight")?; // a view
    assert!(params.grad("0.weight").is_none() || !params.grad("0.weight").unwrap().defined());
    let y = model.forward(&params, &x, /*train*/ true)?;
    assert_eq!(y.size(), vec![4, 1]);

    let opt = optim::Sgd::new(0.3).momentum(0.5);
    let mut inner = InnerLoop::new(&model, &params, opt)
        .copy_initial_weights(false)
        .track_higher_grads(true)
        .override_hparam("lr", &lr)
        .override_hparam("momentum", &mom)
        .build()?;
    let out = inner.forward(&x)?;
    let loss = out.square().mean(Kind::Float);
    inner.step(&loss)?;
    let loss = inner.forward(&x)?.square().mean(Kind::Float);
    inner.step_with(
        &loss,
        StepOptions::new().grad_callback(|g| g.clamp(-1.0, 1.0)),
    )?;
    inner.params();
    inner.params_at(0)?;
    assert_eq!(inner.time(), 2);
    inner.forward(&x)?.square().mean(Kind::Float).backward();
    assert!(lr.grad().defined() && mom.grad().defined() && params.grad("0.weight").is_some());
    Ok(())
}
