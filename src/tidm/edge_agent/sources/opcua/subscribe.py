"""Subscriptions: one subscription per connection, monitored items created in chunks the server
accepts (nodes it refuses to monitor fall back to polling), and the publish callback, the hot path
that turns each PublishResponse into one list of samples."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tidm.edge_agent.sources.base import Emit, RawSample
from tidm.edge_agent.sources.opcua._base import (
    _BAD_TOO_MANY_OPERATIONS,
    _EPOCH,
    _NO_SUBSCRIPTIONS,
    _POLL_FALLBACK,
    _US,
    SourceBase,
    _Session,
    log,
)
from tidm.edge_agent.sources.opcua.nodes import PlannedNode

__all__ = ["SubscribeMixin"]


class SubscribeMixin(SourceBase):
    """Creating the subscription and its monitored items; receiving their notifications."""

    def _keepalive_count(self) -> int:
        # About five seconds between keep-alives whatever the publishing interval.
        return max(3, int(5000 / self.settings.publishing_interval_ms))

    async def _subscribe(
        self, client: Any, session: _Session, plan: Sequence[PlannedNode], node_ids: Sequence[Any], emit: Emit
    ) -> list[tuple[int, Any]]:
        """Create the subscription and its monitored items; return the nodes to poll instead."""
        ua = self._ua
        self.stats.subscribed = self.stats.failed = 0
        live = [
            (i, nid) for i, nid in enumerate(node_ids) if nid is not None and plan[i].observable is not False
        ]
        not_observable = [
            (i, nid) for i, nid in enumerate(node_ids) if nid is not None and plan[i].observable is False
        ]
        if not live:
            return not_observable
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.settings.publishing_interval_ms
        params.RequestedMaxKeepAliveCount = self._keepalive_count()
        params.RequestedLifetimeCount = params.RequestedMaxKeepAliveCount * 10
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        session.targets = plan
        callback = self._publish_callback(session, emit)
        try:
            result = await client.uaclient.create_subscription(params, callback=callback)
        except ua.UaStatusCodeError as exc:
            if exc.code in _NO_SUBSCRIPTIONS:
                log.warning(
                    "%s: server refused a subscription (%s); polling all %d nodes every %g ms",
                    self.name,
                    ua.StatusCode(exc.code).name,
                    len(live),
                    self.settings.poll_interval_ms,
                )
                return live + not_observable
            raise
        session.subscription_id = result.SubscriptionId
        session.last_publish = time.monotonic()
        to_poll: list[tuple[int, Any]] = list(not_observable)
        refused: dict[str, list[str]] = {}
        chunk = self.stats.max_items_per_call
        start = 0
        while start < len(live):
            part = live[start : start + chunk]
            try:
                results = await self._create_items(client, session.subscription_id, plan, part)
            except ua.UaStatusCodeError as exc:
                if exc.code == _BAD_TOO_MANY_OPERATIONS and chunk > 1:
                    # The server enforces a lower limit than it advertised: halve and retry.
                    chunk = max(1, chunk // 2)
                    self.stats.max_items_per_call = chunk
                    log.warning(
                        "%s: BadTooManyOperations; creating %d monitored items per call", self.name, chunk
                    )
                    continue
                if exc.code in _NO_SUBSCRIPTIONS:
                    refused.setdefault(ua.StatusCode(exc.code).name, []).extend(
                        plan[i].node_id for i, _ in part
                    )
                    to_poll.extend(part)
                    start += len(part)
                    continue
                raise
            for (i, nid), res in zip(part, results, strict=True):
                code = int(res.StatusCode.value)
                if code & 0x80000000 == 0:
                    self.stats.subscribed += 1
                elif code in _POLL_FALLBACK:
                    refused.setdefault(res.StatusCode.name, []).append(plan[i].node_id)
                    to_poll.append((i, nid))
                else:
                    self.stats.failed += 1
                    log.error(
                        "%s: cannot monitor %s (%s/%s): %s",
                        self.name,
                        plan[i].node_id,
                        plan[i].asset_id,
                        plan[i].signal,
                        res.StatusCode.name,
                    )
            start += len(part)
        for status, nodes in refused.items():
            log.warning(
                "%s: server refused to monitor %d nodes (%s), polling them instead: %s%s",
                self.name,
                len(nodes),
                status,
                ", ".join(nodes[:5]),
                " ..." if len(nodes) > 5 else "",
            )
        return to_poll

    async def _create_items(
        self, client: Any, subscription_id: int, plan: Sequence[PlannedNode], part: Sequence[tuple[int, Any]]
    ) -> list[Any]:
        ua = self._ua
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = subscription_id
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.ItemsToCreate = [self._request(plan[i], nid, i) for i, nid in part]
        self.stats.largest_create = max(self.stats.largest_create, len(part))
        return list(await client.uaclient.create_monitored_items(params))

    def _request(self, planned: PlannedNode, node_id: Any, handle: int) -> Any:
        ua = self._ua
        rv = ua.ReadValueId()
        rv.NodeId = node_id
        rv.AttributeId = ua.AttributeIds.Value
        params = ua.MonitoringParameters()
        params.ClientHandle = handle
        interval = planned.sampling_interval_ms
        params.SamplingInterval = float(self.settings.sampling_interval_ms if interval is None else interval)
        params.QueueSize = self.settings.queue_size
        params.DiscardOldest = True
        mfilter = ua.DataChangeFilter()
        if planned.deadband and planned.deadband_type is not None:
            # With a timestamp trigger every new timestamp would pass the deadband.
            mfilter.Trigger = ua.DataChangeTrigger.StatusValue
            mfilter.DeadbandType = (
                ua.DeadbandType.Absolute if planned.deadband_type == "absolute" else ua.DeadbandType.Percent
            )
            mfilter.DeadbandValue = float(planned.deadband)
        else:
            mfilter.Trigger = ua.DataChangeTrigger.StatusValueTimestamp
        params.Filter = mfilter
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = rv
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = params
        return req

    def _publish_callback(self, session: _Session, emit: Emit) -> Callable[[Any], None]:
        """The hot path: one PublishResult -> one list of samples -> one `emit` call."""
        ua = self._ua
        data_change = ua.DataChangeNotification
        status_change = ua.StatusChangeNotification
        name = self.name
        stats = self.stats
        metrics = self.metrics
        bool_int_float = (bool, int, float)
        epoch, one_us = _EPOCH, _US

        def on_publish(result: Any) -> None:
            session.last_publish = time.monotonic()
            notifications = result.NotificationMessage.NotificationData
            if not notifications:
                return
            targets = session.targets
            n_targets = len(targets)
            recv = time.time_ns() // 1000
            out: list[RawSample] = []
            append = out.append
            for notif in notifications:
                if type(notif) is data_change:
                    for item in notif.MonitoredItems:
                        handle = item.ClientHandle
                        if handle >= n_targets:
                            continue
                        target = targets[handle]
                        dv = item.Value
                        variant = dv.Value
                        raw = variant.Value if variant is not None else None
                        if raw is None or isinstance(raw, bool_int_float):
                            value = None if raw is None else float(raw)
                            text = None
                        else:
                            value, text = None, str(raw)
                        src = dv.SourceTimestamp
                        append(
                            RawSample(
                                target.asset_id,
                                target.signal,
                                # asyncua decodes timestamps as aware UTC datetimes.
                                recv if src is None else (src - epoch) // one_us,
                                recv,
                                value,
                                text,
                                dv.StatusCode.value,
                            )
                        )
                elif type(notif) is status_change:
                    status = notif.Status
                    if not status.is_good():
                        log.warning("%s: subscription status %s; reconnecting", name, status.name)
                        session.lost.set()
            if out:
                stats.samples += len(out)
                metrics.samples(len(out))
                held = session.held
                if held is not None:
                    held.append(out)
                else:
                    emit(name, out)

        return on_publish
