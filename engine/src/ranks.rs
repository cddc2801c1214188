//! Agreement between ranks: one decision every rank takes alike, and the check that every rank
//! holds the same meta-parameters. Both are collective. Nothing here prints.

use metaloop_runtime::comm::Communicator;
use tch::{Device, Kind, Tensor};

use crate::host::to_f64s;
use crate::meta_params::MetaParams;
use crate::{Error, Result};

/// True on every rank when `flag` is true on at least one rank: one all-reduce of one number,
/// so it is also a barrier. The launcher's stop requests (a SIGTERM that reached some ranks)
/// become one decision taken after the same iteration everywhere.
pub fn any(comm: &dyn Communicator, flag: bool) -> Result<bool> {
    if comm.size() == 1 {
        return Ok(flag);
    }
    let mut votes = Tensor::f_from_slice(&[f64::from(u8::from(flag))])?;
    comm.all_reduce_sum(&mut votes)?;
    Ok(votes.f_double_value(&[0])? != 0.0)
}

/// Every rank's exit code (0: this rank is fine) after a phase that may fail on some ranks, such
/// as the set-up: the lowest rank that failed, with its code, on every rank alike. One
/// all-reduce of one number per rank, so it is also a barrier. The launcher lets only that rank
/// print its error: a bad dataset that every rank finds is reported once.
pub fn first_failure(comm: &dyn Communicator, code: u8) -> Result<Option<(usize, u8)>> {
    if comm.size() == 1 {
        return Ok((code != 0).then_some((0, code)));
    }
    let mut codes = Tensor::f_zeros([comm.size() as i64], (Kind::Double, Device::Cpu))?;
    let _ = codes
        .f_narrow(0, comm.rank() as i64, 1)?
        .f_fill_(f64::from(code))?;
    comm.all_reduce_sum(&mut codes)?;
    Ok(to_f64s(&codes)?
        .iter()
        .enumerate()
        .find(|(_, c)| **c != 0.0)
        .map(|(rank, c)| (rank, *c as u8)))
}

/// Compares this rank's checksum of `meta` with rank 0's after `iteration` outer iterations;
/// every rank learns which ranks differ and all return the same error.
pub fn check_consistency(comm: &dyn Communicator, meta: &MetaParams, iteration: u64) -> Result<()> {
    let mine = meta.checksum()?;
    let mut reference = Tensor::f_from_slice(&mine)?;
    comm.broadcast(&mut reference, 0)?;
    let expected = to_f64s(&reference)?;
    // Equal arithmetic on equal inputs gives equal bits; the tolerance only absorbs a
    // different summation order of the checksum itself on other hardware.
    let differs = metaloop_runtime::comm::checksums_differ(&mine, &expected, 1e-12);
    let mut who = Tensor::f_zeros([comm.size() as i64], (Kind::Double, Device::Cpu))?;
    if differs {
        let _ = who.f_narrow(0, comm.rank() as i64, 1)?.f_fill_(1.0)?;
    }
    comm.all_reduce_sum(&mut who)?;
    let ranks: Vec<usize> = to_f64s(&who)?
        .iter()
        .enumerate()
        .filter(|(_, f)| **f != 0.0)
        .map(|(i, _)| i)
        .collect();
    if ranks.is_empty() {
        Ok(())
    } else {
        Err(Error::RankMismatch {
            iteration,
            expected: expected[0],
            ranks,
        })
    }
}
