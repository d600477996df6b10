//! Commands that read a channel: `presence`, `presence_stats` and `history`, with their
//! permission checks.

use super::*;

impl Client {
    /// Checks read access (presence or history) to `channel` given the namespace's flags.
    pub(super) fn read_access(
        &self,
        channel: &str,
        enabled: impl Fn(&NamespaceOptions) -> bool,
        allowed: impl Fn(&NamespaceOptions) -> (bool, bool, bool),
    ) -> Result<NamespaceOptions, Refusal> {
        let options = self.namespace(channel)?;
        let (for_subscriber, for_client, for_anonymous) = allowed(&options);
        let subscribed = self.subs.contains_key(channel);
        let ok = (for_client || (for_subscriber && subscribed))
            && (!self.user.is_empty() || for_anonymous || subscribed && for_subscriber);
        if !ok {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        if !enabled(&options) {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        }
        Ok(options)
    }

    pub(super) fn presence_access(&self, channel: &str) -> Result<NamespaceOptions, Refusal> {
        self.read_access(
            channel,
            |o| o.presence,
            |o| {
                (
                    o.allow_presence_for_subscriber,
                    o.allow_presence_for_client,
                    o.allow_presence_for_anonymous,
                )
            },
        )
    }

    pub(super) async fn presence(&self, id: u32, channel: &str) -> CommandResult {
        self.presence_access(channel)?;
        let presence = self
            .hub
            .inner
            .presence
            .presence(channel)
            .await
            .map_err(crate::hub::broker_error)?;
        let result = switchboard_proto::PresenceResult { presence };
        Ok(Some(encode_reply(id, &ReplyResult::Presence(result))))
    }

    pub(super) async fn presence_stats(&self, id: u32, channel: &str) -> CommandResult {
        self.presence_access(channel)?;
        let stats = self
            .hub
            .inner
            .presence
            .presence_stats(channel)
            .await
            .map_err(crate::hub::broker_error)?;
        let result = switchboard_proto::PresenceStatsResult {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
        };
        Ok(Some(encode_reply(id, &ReplyResult::PresenceStats(result))))
    }

    pub(super) async fn history(
        &self,
        id: u32,
        req: &switchboard_proto::HistoryRequest,
    ) -> CommandResult {
        let options = self.history_access(&req.channel)?;
        let filter = HistoryFilter {
            since: req.since.clone(),
            limit: usize::try_from(req.limit).ok(),
            reverse: req.reverse,
        };
        let h = self
            .hub
            .inner
            .broker
            .history(&req.channel, &filter, options.history_meta_ttl)
            .await
            .map_err(crate::hub::broker_error)?;
        let result = switchboard_proto::HistoryResult {
            publications: h.publications,
            epoch: h.position.epoch,
            offset: h.position.offset,
        };
        Ok(Some(encode_reply(id, &ReplyResult::History(result))))
    }

    pub(super) fn history_access(&self, channel: &str) -> Result<NamespaceOptions, Refusal> {
        self.read_access(
            channel,
            |o| o.history_size > 0 && !o.history_ttl.is_zero(),
            |o| {
                (
                    o.allow_history_for_subscriber,
                    o.allow_history_for_client,
                    o.allow_history_for_anonymous,
                )
            },
        )
    }
}
