//! `run.memory_budget_gib`: "auto", a number of GiB, or 0 (no planning).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The memory a run may hold at its peak (`run.memory_budget_gib`; engine::plan).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryBudget {
    /// The device's free memory (CUDA) or the host's available memory and limits (CPU).
    Auto,
    /// This many GiB; 0 switches planning off.
    Gib(f64),
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::Auto
    }
}

impl MemoryBudget {
    /// The largest number of GiB allowed (1 PiB).
    pub const MAX_GIB: f64 = (1u64 << 20) as f64;

    /// True for "auto" (left out of a serialised config, so its hash stays as before).
    pub fn is_auto(&self) -> bool {
        *self == MemoryBudget::Auto
    }

    /// True for 0: no planning.
    pub fn is_off(&self) -> bool {
        *self == MemoryBudget::Gib(0.0)
    }
}

impl std::fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryBudget::Auto => f.write_str("auto"),
            MemoryBudget::Gib(g) => write!(f, "{g}"),
        }
    }
}

impl std::str::FromStr for MemoryBudget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(MemoryBudget::Auto);
        }
        s.parse::<f64>()
            .map(MemoryBudget::Gib)
            .map_err(|_| format!("must be \"auto\" or a number of GiB, got {s:?}"))
    }
}

impl Serialize for MemoryBudget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MemoryBudget::Auto => s.serialize_str("auto"),
            MemoryBudget::Gib(g) => s.serialize_f64(*g),
        }
    }
}

struct BudgetVisitor;

impl Visitor<'_> for BudgetVisitor {
    type Value = MemoryBudget;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("\"auto\" or a number of GiB")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MemoryBudget, E> {
        match v {
            "auto" => Ok(MemoryBudget::Auto),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<MemoryBudget, E> {
        Ok(MemoryBudget::Gib(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MemoryBudget, E> {
        Ok(MemoryBudget::Gib(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MemoryBudget, E> {
        Ok(MemoryBudget::Gib(v as f64))
    }
}

impl<'de> Deserialize<'de> for MemoryBudget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BudgetVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryBudget;

    #[derive(serde::Deserialize, serde::Serialize)]
    struct T {
        b: MemoryBudget,
    }

    #[test]
    fn reads_auto_and_numbers_and_writes_them_back() {
        let read = |s: &str| serde_json::from_str::<T>(&format!("{{\"b\": {s}}}")).map(|t| t.b);
        assert_eq!(read("\"auto\"").unwrap(), MemoryBudget::Auto);
        assert_eq!(read("16").unwrap(), MemoryBudget::Gib(16.0));
        assert_eq!(read("0.5").unwrap(), MemoryBudget::Gib(0.5));
        assert!(read("\"lots\"").is_err());
        assert!(read("true").is_err());
        let t = T {
            b: MemoryBudget::Gib(2.5),
        };
        assert_eq!(serde_json::to_string(&t).unwrap(), "{\"b\":2.5}");
        assert!(MemoryBudget::Gib(0.0).is_off() && MemoryBudget::default().is_auto());
    }
}
