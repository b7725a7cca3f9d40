//! `lidar_summarizer`: sensor_msgs/PointCloud2 on `lidar/points` -> twin_msgs/PerceptionSummary
//! on `perception/objects/lidar`. The pipeline is `twinlink_vehicle::lidar`; this file only
//! connects it to ROS. Topics, parameters and frames: see the package README.

use futures::task::LocalSpawnExt;
use futures::StreamExt;
use twin_node_support::{qos, run_node, subscribe_cdr, SummaryOutput};
use twinlink_msgs::sensor_msgs::msg::PointCloud2;
use twinlink_vehicle::lidar::{self, LidarConfig, LidarSummarizer};
use twinlink_vehicle::markers::rgba;

fn main() {
    run_node(
        "lidar_summarizer",
        lidar::parameters(),
        |node, params, spawner| {
            let config = LidarConfig::from_params(params);
            let output = SummaryOutput::new(
                node,
                "perception/objects/lidar",
                params.bool("publish_debug_markers"),
                rgba(0.1, 0.6, 1.0, 0.5),
                &config.sensor_id,
            )?;
            let mut summarizer = LidarSummarizer::new(config);
            let mut clouds =
                subscribe_cdr::<PointCloud2>(node, "lidar/points", qos::sensor_data())?;
            let mut report = node
                .create_wall_timer(std::time::Duration::from_secs(1))
                .map_err(|e| anyhow::anyhow!("diagnostics timer: {e}"))?;
            let output = std::rc::Rc::new(std::cell::RefCell::new(output));
            let for_reports = output.clone();
            spawner.spawn_local(async move {
                while let Some(received) = clouds.next().await {
                    let mut out = output.borrow_mut();
                    let Some(cloud) = out.refusals.accept(received.message) else {
                        continue;
                    };
                    match summarizer.summarize(&cloud) {
                        Ok((summary, _)) => out.publish(summary, received.arrived_us),
                        Err(e) => out.refusals.refuse(e.kind(), &e),
                    }
                }
            })?;
            spawner.spawn_local(async move {
                while report.tick().await.is_ok() {
                    for_reports.borrow_mut().report();
                }
            })?;
            Ok(())
        },
    );
}
