//! Typed identifiers. Each is a UUIDv7, so identifiers sort by creation time, which keeps
//! B-tree inserts append-only and makes them usable as pagination cursors.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh time-ordered identifier.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::ParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| crate::ParseError::new("must be a UUID"))
            }
        }
    };
}

id_type!(
    /// A merchant: every row of every table belongs to exactly one tenant.
    TenantId
);
id_type!(
    /// An API key; the key's secret itself is never stored, only its hash.
    ApiKeyId
);
id_type!(
    /// A catalog product, which groups variants.
    ProductId
);
id_type!(
    /// An order placed through a channel.
    OrderId
);
id_type!(
    /// A CloudEvent's `id`: unique per event, and the inbox key of every consumer.
    EventId
);
