//! Listing, showing and deleting a named API resource: the same requests and printing for
//! environments, routes, timers and queue triggers; only the table differs.

use http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{ApiClient, ApiPath, NO_BODY};
use crate::output::{OutputArgs, Table, print};

/// One kind of named resource under `/v1/{collection}`, shown as a `T`.
pub struct Resource<T> {
    /// What the CLI calls one, in messages ("queue trigger").
    pub kind: &'static str,
    /// Its path under `/v1`.
    pub collection: &'static str,
    /// The table of some of them, for the table and CSV formats.
    pub table: fn(&[T]) -> Table,
}

impl<T: DeserializeOwned + Serialize> Resource<T> {
    fn path(&self, name: Option<&str>) -> ApiPath {
        match name {
            Some(name) => ApiPath::new(["v1", self.collection, name]),
            None => ApiPath::new(["v1", self.collection]),
        }
    }

    pub async fn list(&self, client: &ApiClient, output: &OutputArgs) -> anyhow::Result<()> {
        let all: Vec<T> = client.json(Method::GET, &self.path(None), NO_BODY).await?;
        print(output.format, &all, || (self.table)(&all))
    }

    pub async fn get(
        &self,
        client: &ApiClient,
        name: &str,
        output: &OutputArgs,
    ) -> anyhow::Result<()> {
        let one: T = client
            .json(Method::GET, &self.path(Some(name)), NO_BODY)
            .await?;
        print(output.format, &one, || {
            (self.table)(std::slice::from_ref(&one))
        })
    }

    pub async fn delete(&self, client: &ApiClient, name: &str) -> anyhow::Result<()> {
        client
            .call(Method::DELETE, &self.path(Some(name)), NO_BODY)
            .await?;
        eprintln!("{} {name} deleted", self.kind);
        Ok(())
    }
}
