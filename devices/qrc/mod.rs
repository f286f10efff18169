//! Q-SYS Remote Control (QRC): the wire codec and a strict simulated Core.
//!
//! * [`proto`]: JSON-RPC 2.0 messages each terminated by a NUL byte; a bounded
//!   incremental framer, typed requests, answers and notifications, exact `encode_*`
//!   functions. Shared by the simulator and the adapter.
//! * [`sim`]: a simulated Core on real TCP (port 1710 on real hardware) with a small DSP
//!   design, logon, change groups with AutoPoll, keepalive, a [`sim::Panel`] acting as
//!   the Core's own UI, raw injection and stop/restart. The tests in `sim_tests.rs`
//!   drive it through the codec, as an adapter would.
//!
//! Sources (checked for this implementation):
//! * QSC, "QRC Commands" (q-syshelp.qsc.com/Content/External_Control_APIs/QRC/QRC_Commands.htm,
//!   also the 9.x versions): methods and params, `EngineStatus` pushed on connect, the
//!   `id` echoed, result shapes (`Control.Get` → `[{Name, Value, String}]`,
//!   `Component.GetControls` with Type/Direction/ValueMin/ValueMax/StringMin/StringMax,
//!   `Component.Set`, `AutoPoll {Id, Rate}` answered like a poll), and the error codes:
//!   JSON-RPC -32700/-32600/-32601/-32602/-32603, QRC 2–4 (page requests, file), 5 change
//!   groups exhausted, 6 unknown change group, 7 unknown component, 8 unknown control,
//!   9 illegal mixer channel, 10 logon required.
//! * QSC, "Q-SYS Remote Control Protocol (QRC)" overview (help.qsys.com/q-sys_9.8/Content/
//!   External_Control_APIs/QRC/QRC_Overview.htm): TCP 1710; a client must send something
//!   at least every 60 s or the Core closes the socket.
//! * QSC, "Change Groups for ECP and QRC" (q-syshelp.qsc.com/Content/External_Control_APIs/
//!   external_controls_change_groups.htm): groups die with the connection; a control added
//!   to a group counts as changed; at most 512 change groups per Core.
//! * QSC support, "How To | Formatting a QRC command" (support.qsys.com): every command
//!   NUL-terminated; `StatusGet` sent with `"params": 0`.
//! * Beckhoff TF6310 "TC3 QRC" manual (infosys.beckhoff.com/content/1033/tf6310_qrc/):
//!   the same error-code table (7894781195.html); the dirty/clean model of polls and
//!   `Invalidate` (7892586123.html); a group is created by its first `AddControl`.
//! * Integrators' captures of live Cores: `{"jsonrpc":"2.0","result":true,"id":"crestron"}`
//!   for a good `Logon` with a string id (github.com/MatKlucznyk/Qsys issue #8, Core on
//!   9.4); `{"code":10,"message":"Logon required"}`, `EngineStatus` with `Platform` and
//!   `Status {Code, String}`, and AutoPoll pushes as `ChangeGroup.Poll` notifications, some
//!   with `"Changes":[]`, in a public Q-SYS Lua plugin; a pushed gain of -42.1 dB with
//!   `"Position":0.48250001` (linear in dB over -100..20) and `"Indeterminate":true` in a
//!   public C# QRC sample. These two came from code search without a repository name.
//!
//! Choices where the sources are silent, tolerated by the codec either way: set-like
//! methods answer `true`; out-of-range numbers are clamped; a bad `Logon` answers 10;
//! names that do not resolve in `AddControl`/`Remove`/`Component.Set` answer 8 after the
//! others were processed; requests without an id (QSC's own `Logon` and `NoOp` examples)
//! are JSON-RPC notifications and get no answer; `Ramp` is accepted and the value jumps.

pub mod adapter;
pub mod proto;
pub mod sim;

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
