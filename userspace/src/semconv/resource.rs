//! The Resource of a traced process: `service.name`, `process.*`, `host.name`, the SDK
//! attributes and the instrumentation scope, and the table of traced processes the outputs read
//! them from ([`ProcessTable`]). Shared by spans, metrics and logs so the three signals of one
//! process join up in a backend. It must not encode or send anything.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_semantic_conventions::resource as res;

use super::attributes::{AttrValue, Attrs, ResourceAttrs, int_attr, str_attr};
use crate::model::{ProcessInfo, Span};

/// Instrumentation scope name and `telemetry.sdk.name`.
pub const SCOPE_NAME: &str = "ztrace";
/// Instrumentation scope version and `telemetry.sdk.version`.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How many processes' Resources are remembered; beyond this the least recently used are forgotten.
const MAX_PROCESSES: usize = 16 * 1024;

/// What the Resource of each traced process says.
pub(crate) struct ProcessTable {
    entries: HashMap<u32, (Arc<ProcessInfo>, u64)>,
    tick: u64,
    /// `host.name` for processes without (or with an empty) [`ProcessInfo::host_name`].
    host_fallback: Option<String>,
    /// Configured resource attributes, set on every Resource.
    pub(crate) extra: ResourceAttrs,
}

impl ProcessTable {
    pub(crate) fn new(host_fallback: Option<String>) -> Self {
        ProcessTable {
            entries: HashMap::new(),
            tick: 0,
            host_fallback,
            extra: Vec::new(),
        }
    }

    pub(crate) fn upsert(&mut self, info: Arc<ProcessInfo>) {
        self.tick += 1;
        self.entries.insert(info.pid, (info, self.tick));
        if self.entries.len() > MAX_PROCESSES {
            self.evict();
        }
    }

    /// Marks the processes of `spans` as recently used.
    pub(crate) fn touch(&mut self, spans: &[Span]) {
        self.tick += 1;
        for s in spans {
            if let Some(entry) = self.entries.get_mut(&s.pid) {
                entry.1 = self.tick;
            }
        }
    }

    /// Forgets the least recently used eighth.
    fn evict(&mut self) {
        let mut ticks: Vec<u64> = self.entries.values().map(|(_, t)| *t).collect();
        let k = ticks.len() / 8;
        if k == 0 {
            return;
        }
        let (_, cutoff, _) = ticks.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.entries.retain(|_, (_, t)| *t > cutoff);
    }

    pub(crate) fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.entries.get(&pid).map(|(info, _)| info.as_ref())
    }

    pub(crate) fn host_fallback(&self) -> Option<&str> {
        self.host_fallback.as_deref()
    }

    /// The Resource of `pid`: what was detected, then the configured attributes (which win).
    pub(crate) fn resource(&self, pid: u32) -> ResourceAttrs {
        let mut a: ResourceAttrs = resource_attributes(pid, self.get(pid), self.host_fallback())
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect();
        for (k, v) in &self.extra {
            match a.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => a.push((k.clone(), v.clone())),
            }
        }
        a
    }
}

/// This machine's host name (used when a process's own is unknown).
pub(crate) fn local_host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `service.name` of a traced process.
pub(crate) fn service_name(pid: u32, info: Option<&ProcessInfo>) -> String {
    match info {
        Some(i) if !i.service_name.is_empty() => i.service_name.clone(),
        Some(i) if !i.executable_name.is_empty() => {
            format!("unknown_service:{}", i.executable_name)
        }
        _ => format!("unknown_service:pid{pid}"),
    }
}

/// The Resource of a traced process (`info` None: only what the pid tells).
pub(crate) fn resource_attributes(
    pid: u32,
    info: Option<&ProcessInfo>,
    host_fallback: Option<&str>,
) -> Attrs<'static> {
    let mut a: Attrs<'static> = Vec::with_capacity(15);
    a.push(str_attr(res::SERVICE_NAME, service_name(pid, info)));
    a.push(int_attr(res::PROCESS_PID, pid));
    let mut host = host_fallback;
    if let Some(i) = info {
        if let Some(ppid) = i.parent_pid {
            a.push(int_attr(res::PROCESS_PARENT_PID, ppid));
        }
        if !i.executable_name.is_empty() {
            a.push(str_attr(
                res::PROCESS_EXECUTABLE_NAME,
                i.executable_name.clone(),
            ));
        }
        if !i.executable_path.is_empty() {
            a.push(str_attr(
                res::PROCESS_EXECUTABLE_PATH,
                i.executable_path.clone(),
            ));
        }
        if !i.command_args.is_empty() {
            a.push((
                res::PROCESS_COMMAND_ARGS,
                AttrValue::StrArray(i.command_args.clone()),
            ));
        }
        if !i.host_name.is_empty() {
            host = Some(i.host_name.as_str());
        }
        for (key, value) in [
            (res::PROCESS_RUNTIME_NAME, &i.runtime_name),
            (res::PROCESS_RUNTIME_VERSION, &i.runtime_version),
            (res::CONTAINER_ID, &i.container_id),
            (res::K8S_POD_UID, &i.pod_uid),
        ] {
            if !value.is_empty() {
                a.push(str_attr(key, value.clone()));
            }
        }
    }
    if let Some(h) = host {
        a.push(str_attr(res::HOST_NAME, h.to_string()));
    }
    a.push(str_attr(res::TELEMETRY_SDK_NAME, SCOPE_NAME));
    a.push(str_attr(res::TELEMETRY_SDK_LANGUAGE, "rust"));
    a.push(str_attr(res::TELEMETRY_SDK_VERSION, SCOPE_VERSION));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semconv::attributes::testutil::{get, s};
    use crate::testkit::*;

    #[test]
    fn resource_known_and_unknown() {
        let info = process(1234, "python3");
        let a = resource_attributes(1234, Some(&info), Some("fallback"));
        assert_eq!(get(&a, res::SERVICE_NAME), Some(&s("python3-svc")));
        assert_eq!(get(&a, res::PROCESS_PID), Some(&AttrValue::Int(1234)));
        assert_eq!(get(&a, res::PROCESS_PARENT_PID), Some(&AttrValue::Int(1)));
        assert_eq!(get(&a, res::PROCESS_EXECUTABLE_NAME), Some(&s("python3")));
        assert_eq!(
            get(&a, res::PROCESS_EXECUTABLE_PATH),
            Some(&s("/usr/bin/python3"))
        );
        assert_eq!(
            get(&a, res::PROCESS_COMMAND_ARGS),
            Some(&AttrValue::StrArray(vec![
                "python3".into(),
                "app.py".into()
            ]))
        );
        assert_eq!(get(&a, res::HOST_NAME), Some(&s("node-1")));
        assert_eq!(get(&a, res::TELEMETRY_SDK_NAME), Some(&s("ztrace")));
        assert_eq!(get(&a, res::TELEMETRY_SDK_LANGUAGE), Some(&s("rust")));
        assert_eq!(get(&a, res::TELEMETRY_SDK_VERSION), Some(&s(SCOPE_VERSION)));

        let a = resource_attributes(99, None, Some("fallback"));
        assert_eq!(
            get(&a, res::SERVICE_NAME),
            Some(&s("unknown_service:pid99"))
        );
        assert_eq!(get(&a, res::PROCESS_PID), Some(&AttrValue::Int(99)));
        assert_eq!(get(&a, res::PROCESS_PARENT_PID), None);
        assert_eq!(get(&a, res::HOST_NAME), Some(&s("fallback")));
    }

    #[test]
    fn process_table_evicts_least_recently_used() {
        let mut t = ProcessTable::new(None);
        t.upsert(Arc::new(process(1, "keep")));
        for pid in 2..=(MAX_PROCESSES as u32) {
            t.upsert(Arc::new(process(pid, "p")));
        }
        let mut span = server_span();
        span.pid = 1;
        t.touch(&[span]);
        t.upsert(Arc::new(process(u32::MAX, "new")));
        assert!(t.entries.len() <= MAX_PROCESSES);
        assert!(t.get(1).is_some());
        assert!(t.get(u32::MAX).is_some());
        assert!(t.get(2).is_none());
    }
}
