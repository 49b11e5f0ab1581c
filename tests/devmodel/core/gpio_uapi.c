/* Prints what linux/gpio.h says of the GPIO character device v2 uAPI, for test_gpio_uapi.py. */
#include <stdio.h>
#include <stddef.h>
#include <linux/gpio.h>
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu\n", sizeof(struct gpiochip_info), sizeof(struct gpio_v2_line_info),
           sizeof(struct gpio_v2_line_config), sizeof(struct gpio_v2_line_request), sizeof(struct gpio_v2_line_values),
           sizeof(struct gpio_v2_line_event));
    printf("%lu %lu %lu %lu %lu %lu\n", (unsigned long)GPIO_GET_CHIPINFO_IOCTL, (unsigned long)GPIO_V2_GET_LINEINFO_IOCTL,
           (unsigned long)GPIO_V2_GET_LINE_IOCTL, (unsigned long)GPIO_V2_LINE_SET_CONFIG_IOCTL,
           (unsigned long)GPIO_V2_LINE_GET_VALUES_IOCTL, (unsigned long)GPIO_V2_LINE_SET_VALUES_IOCTL);
    printf("%zu %zu %zu\n", offsetof(struct gpio_v2_line_info, offset), offsetof(struct gpio_v2_line_request, fd),
           offsetof(struct gpio_v2_line_event, id));
    printf("%d %d %d %d %d %d %d\n", GPIO_V2_LINE_FLAG_INPUT, GPIO_V2_LINE_FLAG_OUTPUT, GPIO_V2_LINE_FLAG_EDGE_RISING,
           GPIO_V2_LINE_FLAG_EDGE_FALLING, GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES, GPIO_V2_LINE_EVENT_RISING_EDGE,
           GPIO_V2_LINE_EVENT_FALLING_EDGE);
    return 0;
}
