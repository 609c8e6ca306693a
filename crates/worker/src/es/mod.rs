//! Everything that talks to Elasticsearch: the typed [`document`] and its index template, the
//! pure [`bulk`] request planning and response classification, and the HTTP [`client`].

pub mod bulk;
pub mod client;
pub mod document;
