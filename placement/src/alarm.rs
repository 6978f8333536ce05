//! etcd's alarms, kept in placement's replicated state (`State::alarms`), so
//! an alarm is cluster-wide and survives restarts and failovers. Nodes raise
//! NOSPACE here when a write would pass their space quota
//! (`strata_node::space`) and learn the active list from every heartbeat;
//! routers serve etcd's `Maintenance.Alarm` and `Status.errors` from it.
//!
//! As etcd's: GET lists every alarm (or those of one type); ACTIVATE and
//! DEACTIVATE answer the alarm they changed, or nothing when it was already
//! so; ACTIVATE or DEACTIVATE of type NONE changes nothing.

use strata_proto::errors;
use strata_proto::strata::{Alarm, AlarmChange, AlarmList};
use tonic::Status;

use crate::service::PlacementService;
use crate::state::{Command, Outcome, State};

/// The most alarms kept (member ids come from clients).
pub const MAX_ALARMS: usize = 4096;

/// etcd's AlarmRequest actions and alarm types.
const GET: i32 = 0;
const ACTIVATE: i32 = 1;
const DEACTIVATE: i32 = 2;
const NONE: i32 = 0;
pub const NOSPACE: i32 = 1;
const CORRUPT: i32 = 2;

/// The active alarms, in (member id, type) order.
pub fn active(st: &State) -> Vec<Alarm> {
    st.alarms
        .iter()
        .map(|&(member_id, alarm)| Alarm { member_id, alarm })
        .collect()
}

/// Is a NOSPACE alarm active (writes that add data are refused)?
pub fn nospace(st: &State) -> bool {
    st.alarms.iter().any(|&(_, t)| t == NOSPACE)
}

impl PlacementService {
    pub async fn alarm(&self, req: AlarmChange) -> Result<AlarmList, Status> {
        self.serving()?;
        let a = req.alarm.unwrap_or_default();
        match req.action {
            GET => {
                let st = self.rep.state();
                let alarms = active(&st)
                    .into_iter()
                    .filter(|x| a.alarm == NONE || x.alarm == a.alarm)
                    .collect();
                Ok(AlarmList { alarms })
            }
            ACTIVATE | DEACTIVATE => {
                if a.alarm == NONE {
                    return Ok(AlarmList::default());
                }
                if a.alarm != NOSPACE && a.alarm != CORRUPT {
                    return Err(Status::invalid_argument(format!(
                        "strata: unknown alarm type {}",
                        a.alarm
                    )));
                }
                let cmd = Command::Alarm {
                    activate: req.action == ACTIVATE,
                    member_id: a.member_id,
                    alarm: a.alarm,
                };
                match self.rep.propose(cmd).await? {
                    Outcome::Alarm(true) => {
                        tracing::warn!(
                            member_id = a.member_id,
                            alarm = a.alarm,
                            activated = req.action == ACTIVATE,
                            "alarm changed"
                        );
                        Ok(AlarmList { alarms: vec![a] })
                    }
                    Outcome::Alarm(false) => Ok(AlarmList::default()),
                    other => Err(Status::internal(format!(
                        "strata: unexpected alarm outcome {other:?}"
                    ))),
                }
            }
            other => Err(Status::invalid_argument(format!(
                "strata: unknown alarm action {other}"
            ))),
        }
    }

    /// etcd refuses a lease grant while a NOSPACE alarm is active.
    pub fn check_space(&self) -> Result<(), Status> {
        match nospace(&self.rep.state()) {
            true => Err(errors::no_space()),
            false => Ok(()),
        }
    }
}
