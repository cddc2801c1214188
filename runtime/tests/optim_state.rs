//! Optimizer options and state (runtime::optim): options declared once with torch's defaults,
//! state buffers named by `Buffer`, checkpoint names that round-trip, and a state whose buffer is
//! misspelt or belongs to another optimizer refused with an error instead of read as zeros.

use metaloop_runtime::optim::{self, Buffer, HParams, OptState, Optimizer};
use metaloop_runtime::Error;
use tch::{Device, Kind, Tensor};

fn theta_grad() -> (Tensor, Tensor) {
    let o = (Kind::Double, Device::Cpu);
    (
        Tensor::from_slice(&[1.0, -2.0, 3.0]).to_kind(o.0),
        Tensor::from_slice(&[0.5, 0.25, -1.0]).to_kind(o.0),
    )
}

#[test]
fn options_start_at_torch_defaults_and_setters_set_them() {
    let adam = optim::Adam::new(1e-3);
    assert_eq!(
        (
            adam.beta1,
            adam.beta2,
            adam.eps,
            adam.weight_decay,
            adam.amsgrad
        ),
        (0.9, 0.999, 1e-8, 0.0, false)
    );
    assert_eq!(optim::AdamW::new(1e-3).weight_decay, 1e-2);
    assert_eq!(optim::Adagrad::new(0.1).eps, 1e-10);
    assert_eq!(optim::Adadelta::new(1.0).eps, 1e-6);
    let rprop = optim::Rprop::new(0.01)
        .etas(0.4, 1.3)
        .step_sizes(1e-5, 10.0);
    assert_eq!(
        (
            rprop.eta_minus,
            rprop.eta_plus,
            rprop.step_size_min,
            rprop.step_size_max
        ),
        (0.4, 1.3, 1e-5, 10.0)
    );
    let sgd = optim::Sgd::new(0.1).momentum(0.9).nesterov(true);
    assert_eq!(
        sgd,
        optim::Sgd {
            momentum: 0.9,
            nesterov: true,
            ..optim::Sgd::new(0.1)
        }
    );
    assert_eq!(sgd.hparam_default("momentum"), Some(0.9));
    assert_eq!(sgd.hparam_default("lr"), Some(0.1));
    assert_eq!(sgd.hparam_default("betas"), None);
    let hp = HParams::defaults(&optim::Adam::new(1e-3).betas(0.8, 0.99));
    assert_eq!(hp.get("beta1").and_then(|v| v.as_const()), Some(0.8));
    assert_eq!(hp.get("beta2").and_then(|v| v.as_const()), Some(0.99));
}

#[test]
fn buffer_names_round_trip_through_a_checkpoint() {
    for b in Buffer::ALL {
        assert_eq!(Buffer::from_name(b.name()), Some(b));
    }
    let (theta, grad) = theta_grad();
    let adam = optim::Adam::new(0.1).amsgrad(true);
    let hp = HParams::defaults(&adam);
    let (_, state) = adam
        .update(&theta, &grad, &adam.init_state(&theta).unwrap(), &hp)
        .unwrap();
    let names: Vec<&str> = state.tensors().map(|(n, _)| n).collect();
    assert_eq!(names, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
    // As engine's checkpoint code saves and restores it: by name.
    let saved: Vec<(String, Tensor)> = state
        .tensors()
        .map(|(n, t)| (n.to_string(), t.copy()))
        .collect();
    let restored = OptState::new(state.step(), saved);
    let (a, sa) = adam.update(&theta, &grad, &state, &hp).unwrap();
    let (b, sb) = adam.update(&theta, &grad, &restored, &hp).unwrap();
    assert!(a.equal(&b));
    for ((na, ta), (nb, tb)) in sa.tensors().zip(sb.tensors()) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb));
    }
}

#[test]
fn a_misspelt_or_foreign_buffer_is_an_error_not_zeros() {
    let (theta, grad) = theta_grad();
    for fused in [false, true] {
        let adam = optim::Adam::new(0.1).fused(fused);
        let hp = HParams::defaults(&adam);
        let misspelt = OptState::new(
            1,
            vec![
                ("exp_avg".to_string(), theta.zeros_like()),
                ("exp_avgsq".to_string(), theta.ones_like()),
            ],
        );
        let err = adam.update(&theta, &grad, &misspelt, &hp).unwrap_err();
        assert!(matches!(err, Error::OptState { .. }), "{err}");
        assert!(err.to_string().contains("`exp_avgsq`"), "{err}");
        assert!(err.to_string().contains("exp_avg_sq"), "{err}");

        let sgd = optim::Sgd::new(0.1).momentum(0.9).fused(fused);
        let foreign = adam.init_state(&theta).unwrap();
        let err = sgd
            .update(&theta, &grad, &foreign, &HParams::defaults(&sgd))
            .unwrap_err();
        assert!(err.to_string().contains("`exp_avg`"), "{err}");
    }
}
