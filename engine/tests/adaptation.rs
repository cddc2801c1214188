//! engine::adaptation: the curves of the adaptation figure. The true curve and the support points
//! lie on the task's sinusoid; the prediction before adaptation is the model at θ0; after one
//! step it equals one SGD step taken here with plain autograd (1e-10 in f64); and ten steps fit
//! the support points better than none.

use metaloop_engine::adaptation::{sinusoid, AdaptationSpec};
use metaloop_engine::data::{Sinusoid, Split};
use metaloop_runtime::nn::{self, Module};
use metaloop_runtime::optim::Sgd;
use metaloop_runtime::Params;
use tch::{Device, Kind, Tensor};

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.detach().reshape([-1])).unwrap()
}

#[test]
fn curves_lie_on_the_task_and_adaptation_fits_the_support_points() {
    let model = nn::mlp(&[1, 40, 40, 1]);
    let params = Params::init(&model, 11, Kind::Double, Device::Cpu).unwrap();
    let lr = 0.01;
    let spec = AdaptationSpec::figure(7, 10, Box::new(Sgd::new(lr)));
    let curves = sinusoid(&model, &params, &spec, &[]).unwrap();
    assert_eq!(curves.len(), 3);
    let source = Sinusoid::new(10, 1).unwrap();
    for (t, c) in curves.iter().enumerate() {
        assert_eq!(c.task, source.task_function(7, 0, t, Split::Test));
        assert_eq!(c.support.len(), 10);
        for &(x, y) in &c.support {
            assert!((y - c.task.eval(x)).abs() < 1e-12 && (-5.0..5.0).contains(&x));
        }
        assert_eq!(c.grid.len(), 200);
        assert_eq!((c.grid[0], c.grid[199]), (-5.0, 5.0));
        for (x, y) in c.grid.iter().zip(&c.truth) {
            assert!((y - c.task.eval(*x)).abs() < 1e-12);
        }
        let steps: Vec<usize> = c.predictions.iter().map(|p| p.steps).collect();
        assert_eq!(steps, [0, 1, 10]);

        // Before adaptation: the model at θ0.
        let grid = Tensor::from_slice(&c.grid).view([200, 1]);
        let before = values(&model.forward(&params, &grid, true).unwrap());
        let max_diff = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
        };
        assert!(max_diff(&before, &c.predictions[0].y) < 1e-12);

        // One SGD step by hand: θ1 = θ0 − lr ∇ MSE(support).
        let theta = params.flat().detach().set_requires_grad(true);
        let at = Params::from_flat(params.layout().clone(), theta.shallow_clone()).unwrap();
        let xs: Vec<f64> = c.support.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = c.support.iter().map(|p| p.1).collect();
        let sx = Tensor::from_slice(&xs).view([10, 1]);
        let sy = Tensor::from_slice(&ys).view([10, 1]);
        let loss = model
            .forward(&at, &sx, true)
            .unwrap()
            .mse_loss(&sy, tch::Reduction::Mean);
        let grad = Tensor::run_backward(&[&loss], &[&theta], false, false).remove(0);
        let theta1 = (theta.detach() - grad * lr).detach();
        let p1 = Params::from_flat(params.layout().clone(), theta1).unwrap();
        let after1 = values(&model.forward(&p1, &grid, true).unwrap());
        assert!(max_diff(&after1, &c.predictions[1].y) < 1e-10);
        assert!((c.predictions[0].support_mse - loss.double_value(&[])).abs() < 1e-10);

        // Ten steps fit the support points better than none, and better than one.
        let (p0, p1, p10) = (&c.predictions[0], &c.predictions[1], &c.predictions[2]);
        assert!(
            p10.support_mse < p1.support_mse && p1.support_mse < p0.support_mse,
            "task {t}: support MSE {} -> {} -> {}",
            p0.support_mse,
            p1.support_mse,
            p10.support_mse
        );
    }
}
