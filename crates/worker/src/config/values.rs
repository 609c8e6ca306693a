//! The values a setting can take that need a type of their own: durations, byte sizes' lists,
//! secrets. Each parses the same from a flag, an environment variable and the TOML file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A duration written as `100ms`, `30s`, `5m`: parsed by `humantime` on the command line and
/// in the environment, and by `humantime-serde` in the TOML file. (A newtype, because the
/// `settings!` table needs one type that both clap and serde take as it is.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration like 100ms, 30s or 5m: {e}"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d).map(HumanDuration)
    }
}

/// A secret value (`secrecy`): never printed by `Debug`, zeroed when dropped. A newtype only so
/// that clap can parse it from a flag or variable like every other setting.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(SecretString::from(s))
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(SecretString::from(s)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A list given as `a,b,c` (flag or environment) or as a TOML array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

impl<T: FromStr> FromStr for List<T>
where
    T::Err: fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<T>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(List)
    }
}

/// In a TOML file a list is an array (`fetch-allow = ["10.0.0.0/8"]`) or, as on the command line,
/// one comma-separated string (`kafka-option = "a=b,c=d"`).
impl<'de, T> Deserialize<'de> for List<T>
where
    T: Deserialize<'de> + FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form<T> {
            Many(Vec<T>),
            One(String),
        }
        match Form::<T>::deserialize(d)? {
            Form::Many(v) => Ok(List(v)),
            Form::One(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}
