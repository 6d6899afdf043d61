//! The machines this node runs, by sandbox id: how the service reaches a guest agent.

use std::collections::HashMap;
use std::sync::RwLock;

use kiln_runtime::MachineInfo;

/// Running machines by id. Filled by the reconciler, read by every request.
#[derive(Default)]
pub struct Machines {
    by_id: RwLock<HashMap<String, MachineInfo>>,
}

impl Machines {
    /// The running machine of that id.
    pub fn get(&self, id: &str) -> Option<MachineInfo> {
        self.by_id
            .read()
            .expect("machine table lock is never poisoned")
            .get(id)
            .cloned()
    }

    /// Records a machine as running.
    pub fn insert(&self, info: MachineInfo) {
        self.by_id
            .write()
            .expect("machine table lock is never poisoned")
            .insert(info.id.clone(), info);
    }

    /// Forgets a machine.
    pub fn remove(&self, id: &str) -> Option<MachineInfo> {
        self.by_id
            .write()
            .expect("machine table lock is never poisoned")
            .remove(id)
    }

    /// Ids of all known machines.
    pub fn ids(&self) -> Vec<String> {
        self.by_id
            .read()
            .expect("machine table lock is never poisoned")
            .keys()
            .cloned()
            .collect()
    }
}
