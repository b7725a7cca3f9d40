//! `radar_summarizer`: radar detections (sensor_msgs/PointCloud2) on `radar/points` and
//! nav_msgs/Odometry on `odom` -> twin_msgs/PerceptionSummary on
//! `perception/objects/radar`. The pipeline is `twinlink_vehicle::radar`; this file only
//! connects it to ROS. Topics, parameters and frames: see the package README.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::task::LocalSpawnExt;
use futures::StreamExt;
use twin_node_support::{now_us, qos, run_node, subscribe_cdr, SummaryOutput};
use twinlink_msgs::nav_msgs::msg::Odometry;
use twinlink_msgs::sensor_msgs::msg::PointCloud2;
use twinlink_vehicle::markers::rgba;
use twinlink_vehicle::radar::{self, EgoMotion, RadarConfig, RadarSummarizer};

fn main() {
    run_node(
        "radar_summarizer",
        radar::parameters(),
        |node, params, spawner| {
            let config = RadarConfig::from_params(params);
            let odom_timeout_us = (params.f64("odom_timeout") * 1e6) as u64;
            let output = Rc::new(RefCell::new(SummaryOutput::new(
                node,
                "perception/objects/radar",
                params.bool("publish_debug_markers"),
                rgba(1.0, 0.4, 0.1, 0.5),
                &config.sensor_id,
            )?));
            let mut summarizer = RadarSummarizer::new(config);
            // The newest ego motion and when it arrived.
            let ego: Rc<Cell<Option<(EgoMotion, u64)>>> = Rc::new(Cell::new(None));

            let mut odometry = subscribe_cdr::<Odometry>(node, "odom", qos::sensor_data())?;
            let (ego_writer, odom_output) = (ego.clone(), output.clone());
            spawner.spawn_local(async move {
                while let Some(received) = odometry.next().await {
                    match received.message {
                        Ok(odom) => {
                            let t = &odom.twist.twist;
                            let motion = EgoMotion {
                                vx: t.linear.x,
                                vy: t.linear.y,
                                yaw_rate: t.angular.z,
                            };
                            if [motion.vx, motion.vy, motion.yaw_rate]
                                .iter()
                                .all(|v| v.is_finite())
                            {
                                ego_writer.set(Some((motion, received.arrived_us)));
                            } else {
                                odom_output
                                    .borrow_mut()
                                    .refusals
                                    .refuse("odometry_not_finite", &"odometry twist is not finite");
                            }
                        }
                        Err(e) => odom_output.borrow_mut().refusals.refuse(e.kind(), &e),
                    }
                }
            })?;

            let mut clouds =
                subscribe_cdr::<PointCloud2>(node, "radar/points", qos::sensor_data())?;
            let cloud_output = output.clone();
            spawner.spawn_local(async move {
                while let Some(received) = clouds.next().await {
                    let mut out = cloud_output.borrow_mut();
                    let Some(cloud) = out.refusals.accept(received.message) else {
                        continue;
                    };
                    let now = now_us();
                    let motion = ego
                        .get()
                        .filter(|(_, at)| now.saturating_sub(*at) <= odom_timeout_us)
                        .map(|(m, _)| m);
                    if motion.is_none() {
                        // Counted, not refused: the targets are still published, without velocity.
                        out.refusals.refuse(
                            "no_recent_odometry",
                            &"no odometry within odom_timeout: velocities are not reported",
                        );
                    }
                    match summarizer.summarize(&cloud, motion) {
                        Ok((summary, _, _)) => out.publish(summary, received.arrived_us),
                        Err(e) => out.refusals.refuse(e.kind(), &e),
                    }
                }
            })?;

            let mut report = node
                .create_wall_timer(std::time::Duration::from_secs(1))
                .map_err(|e| anyhow::anyhow!("diagnostics timer: {e}"))?;
            spawner.spawn_local(async move {
                while report.tick().await.is_ok() {
                    output.borrow_mut().report();
                }
            })?;
            Ok(())
        },
    );
}
