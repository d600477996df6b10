//! Calls to the application's backend (the proxies): request bodies and answers.

use super::*;

impl Client {
    /// The fields every proxy request carries.
    pub(super) fn proxy_body(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut body = serde_json::Map::new();
        body.insert("client".into(), self.id.to_string().into());
        body.insert("transport".into(), self.transport.name.into());
        body.insert("protocol".into(), "json".into());
        body.insert("encoding".into(), "json".into());
        if self.connected {
            body.insert("user".into(), self.user.to_string().into());
        }
        // `meta` comes from the backend itself (token or connect proxy), parsed once already.
        if let Some(meta) = self.meta.as_deref().and_then(|m| raw_to_value(m).ok()) {
            body.insert("meta".into(), meta);
        }
        body
    }

    /// Calls the backend; maps its refusals and failures to client-visible outcomes.
    pub(super) async fn call_proxy<T>(
        &self,
        kind: ProxyKind,
        endpoint: &str,
        body: serde_json::Map<String, serde_json::Value>,
    ) -> Result<T, Refusal>
    where
        T: for<'de> serde::Deserialize<'de> + Default,
    {
        let Some(proxy) = self.hub.inner.proxy.get() else {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        };
        let answer = proxy
            .call(
                kind,
                endpoint,
                &self.headers,
                serde_json::Value::Object(body),
            )
            .await
            .and_then(parse_answer::<T>);
        match answer {
            Ok(ProxyAnswer::Result(r)) => Ok(r),
            Ok(ProxyAnswer::Error {
                code,
                message,
                temporary,
            }) => Err(Refusal::Custom {
                code,
                message,
                temporary,
            }),
            Ok(ProxyAnswer::Disconnect(code)) => Err(Refusal::Disconnect(code)),
            Err(e) => {
                tracing::warn!(client = %self.id, proxy = kind.name(), error = %e, "proxy call failed");
                Err(ErrorCode::INTERNAL.into())
            }
        }
    }

    /// The proxy URL for `kind`: the namespace's override, else the global one.
    pub(super) fn endpoint(&self, kind: ProxyKind, namespace_override: &str) -> String {
        if namespace_override.is_empty() {
            self.hub.config().proxy.endpoint(kind).to_string()
        } else {
            namespace_override.to_string()
        }
    }
}
